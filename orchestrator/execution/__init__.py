"""Running folds: Ray (`ray_session`), the job a trial gets and what it sends back (`jobs`), the trainable
(`trainable`), preparing samples as Ray tasks (`parallel`), the live sweep state (`state`) and the Ray
Tune runner (`runner`).
"""
