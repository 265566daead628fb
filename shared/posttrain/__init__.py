"""posttrain: the utility package of the posttrain-course labs.

Four subpackages, one role each (docs/ARCHITECTURE.md has the rule and where a new lab's code goes):

- ``core``: course machinery any lab and profile uses (profiles, models, data, train, evaluate, forgetting, plots,
  checks). It imports nothing else of the package.
- ``world``: the data the labs run on: the tiny world, its build and shipped models, the colab hub datasets and the
  benchmarks made from them. It imports ``core`` only.
- ``methods``: one module per lecture concept (``lora``, ``regularize``, ``replay``, ``theory``, ``editing``,
  ``merging``). A method takes its data as arguments and imports ``core`` only.
- ``studies``: one module per lab, named after it (``finetune_and_forget`` for Lab 01, ...): the lab's experiment,
  which brings the world's data to the methods. It imports ``core``, ``world`` and ``methods``, never another study.
"""

__version__ = "0.1.0"
