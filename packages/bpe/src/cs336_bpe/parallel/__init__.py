"""The multi-process machinery behind whole-file training and encoding; nothing here is needed to read the BPE.

| module | what it does |
|---|---|
| `processes` | how many processes, the start method, an ordered process pool (pre-token counting) |
| `chunking` | cuts a file into chunks at special tokens, so that they can be processed independently |
| `chunk_workers` | processes that claim a file's chunks from a shared counter and encode them |
| `word_sharing` | those processes share the words they run BPE on, through logs in shared memory |
| `file_encoding` | the main process's side: encode chunks too, append finished ones to the output in order |

The entry points are `counting.count_file_pretokens` (used by `train_bpe`) and `corpus.encode_file`.
"""
