"""The search side: use a trained model on a video collection.

    api.py          load_model: encode captions and video files in your own code
    store.py        the index folder: SQLite records, float16 vector parts, the writer lock
    video_index.py  reading an index (records, vectors checked by CRC, files), its model
    collect.py      what to index (a folder, a split), robust to odd names, loops, vanishing
    thumbs.py       one thumbnail per video
    indexer.py      build or extend an index (incremental, resumable, torchrun)
    encode.py staging.py   one rank's encoding of its share; its staged parts (resume)
    moments.py      moment search: time windows per video, merging a video's hits
    ann.py ann_update.py   approximate search (FAISS, the [search] extra) and its upkeep
    searcher.py     rank an index for text queries (exact, ANN, tightTransf re-ranking)
    legacy.py       convert an index.json index (the first format)
    index.py search.py serve.py   the CLIs (``python -m clip4clip_dali.index|search|serve``
                    run them through thin modules of the same names one floor up)
    web/            the page ``serve`` sends
"""
