"""Per-lab studies, one module per lab named after its notebook: ``finetune_and_forget`` (Lab 01),
``lora_and_regularization`` (Lab 02), ``replay_and_self_distillation`` (Lab 03). A study runs the lab's experiment
for a profile, bringing the world's data to the methods; it imports ``core``, ``world`` and ``methods``, never another
study."""
