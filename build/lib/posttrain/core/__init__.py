"""Course machinery: profiles and devices, model loading, chat data, the training loop, evaluation and scoring,
forgetting measurements, plots and graded-test checks. Imports nothing else of ``posttrain``."""
