"""The search side: use a trained model on a video collection.

    api.py          load_model: encode captions and video files in your own code
    video_index.py  an index on disk, and the Searcher over it
    indexer.py      build or extend an index (incremental, resumable, torchrun)
    index.py search.py serve.py   the CLIs (``python -m clip4clip_dali.index|search|serve``
                    run them through thin modules of the same names one floor up)
    web/            the page ``serve`` sends
"""
