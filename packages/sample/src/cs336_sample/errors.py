"""`SampleError`: a problem with the user's input (settings, prompt, checkpoint, tokenizer), not a bug.

The CLI shows these as one clear message and a non-zero exit code, without a traceback.
"""


class SampleError(ValueError):
    """Something the user gave us is wrong; the message says what, with the offending value, and what to do."""
