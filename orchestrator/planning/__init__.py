"""What a sweep will do before anything trains: the prepared datasets it reads (`data`), its folds and
which are stored (`plan`), the results store (`store`), one run per workdir (`lock`).
"""
