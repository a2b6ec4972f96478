"""Files a run writes and an evaluation reads back: atomic writes, and the evaluation-only activation captures
(``capture-activations``) that the attack harness (:mod:`fedguard.attacks`) scores. Neutral ground: the apps
write these formats, the attacks read them, and neither imports the other."""
