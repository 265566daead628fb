"""The data every lab runs on: the tiny world and the colab profile's hub datasets.

- ``tiny``: the synthetic world (people, corpora, skills, new tasks) and the scorers of its skills;
- ``build``: its tokenizer and the base → chat → CPT build of the shipped models (``checkpoints/``),
  ``python -m posttrain.world build`` / ``report``;
- ``hub``: the colab profile's real datasets and the scorers of their skills;
- ``benchmarks``: one ``ForgettingBenchmark`` per profile from either.

The world imports only the machinery (``posttrain.core``); see docs/ARCHITECTURE.md for the rule.
"""
