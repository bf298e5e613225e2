"""The parts of context mixing, each testable alone; :class:`llmzip.mix.Mixer` drives them.

* :mod:`.ngram`: the hashed n-gram table (contexts, lookups, counting);
* :mod:`.match`: the match model (tokens by file position, each row's match);
* :mod:`.gates`: the gate weights (log-weights per model and class, softmax, learning);
* :mod:`.mixture`: the integer mixture of one step (scaled LM tables plus sparse shares).
"""
