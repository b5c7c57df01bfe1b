"""
bench.py's pieces, one purpose a file, each read top down (bench.py parses, checks and calls them):

    timing.py   time variants interleaved and summarise the passes; a round's pieces and the speedup they predict
    loops.py    how much of a text sits in a periodic loop
    tables.py   the paper's tables: every variant's speed at batch 1, with the analysis under each table
    sweep.py    exit layer x draft length and the stop rules (--sweep, --auto); the stored recommendation (--store)
    peers.py    Hugging Face transformers decoding the same weights in the same run (--peers)
    memory.py   peak memory of each decoder in a fresh process (--memory)
    batches.py  throughput at several batch sizes (--batch_sizes)
"""
