"""What a sweep's results look like: the results of each (dataset, point, seed) from the store (`results`),
rows and exports (`report`), the paper-layout tables (`tables`), the terminal view (`view`), figures
(`figures`).
"""
