"""One module per notebook: the analysis a notebook shows, so that the notebook only configures and calls.

``tokenization`` (01), ``finetuning`` (03), ``ablations`` (04), ``embeddings`` (05), and ``report`` (the key
numbers every notebook records)."""
