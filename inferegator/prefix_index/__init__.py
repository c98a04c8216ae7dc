"""The prefix index: which runtime probably holds which prompt prefix in its cache.

``pages`` cuts a request's rendered prompt into chained page hashes; ``stores`` keeps,
per runtime, the pages sent there, aged by what the runtime can hold (in memory for one
process, in Redis for every worker and replica).
"""
