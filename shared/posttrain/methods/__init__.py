"""Lecture methods, one module per concept: ``lora``, ``regularize`` (L2-SP, EWC), ``replay`` (replay,
pseudo-replay, SDFT targets), ``theory`` (forward vs reverse KL), ``editing`` (causal tracing, ROME), ``merging``
(task vectors, TIES, DARE, the chat vector). A method takes its data as arguments and imports only
``posttrain.core``."""
