"""The built-in study kinds (importing this module registers them in :data:`poisonlab.bench.study.STUDIES`).

- ``classifier``: poisoned classifiers, repairs with a trusted share, detectors (:mod:`poisonlab.bench.classifier_section`);
- ``ssl``: SSL encoders, distillation, PatchSearch, DECREE (:mod:`poisonlab.bench.ssl_section`);
- ``text``: text-modality poisoning over doses (:mod:`poisonlab.bench.text_section`);
- ``training``: training-time defenses, CLIP pre-trained on poisoned pairs (:mod:`poisonlab.bench.training_section`).
"""

from poisonlab.bench import classifier_section, ssl_section, text_section, training_section
from poisonlab.bench.study import STUDIES

__all__ = ["BUILT_IN", "STUDIES"]

BUILT_IN = (classifier_section.ClassifierSection, ssl_section.SslSection, text_section.TextSection,
            training_section.TrainingSection)
