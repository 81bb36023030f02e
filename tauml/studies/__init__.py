"""One module per notebook: the analysis a notebook shows, so that the notebook only configures and calls.

``tokenization`` (01), ``finetuning`` (03), ``ablations`` (04), ``embeddings`` (05), ``report`` (the key
numbers every notebook records), and ``prepare`` (``tauml prepare``: everything the notebooks train, built in
advance with the notebooks' default settings, the ``NOTEBOOK_*`` constants of the modules above)."""
