"""Where a run's text comes from, before any tokenizer sees it (nothing here imports torch):

    bundled.py    the TinyStories sample cs336-train ships: the main job's offline default
    download.py   the full course datasets (TinyStories V2, the CS336 OpenWebText sample), downloaded and verified
"""
