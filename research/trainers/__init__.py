"""Training engines and the algorithm they share.

- :mod:`research.trainers.grpo_math`: PROTOCOL.md section 6 as pure torch functions (group
  advantages, the k3 KL, the clipped policy loss with KL and entropy terms); no engine import.
- :mod:`research.trainers.trl_settings`: the same settings as TRL ``GRPOConfig`` keyword
  arguments, with what TRL cannot express listed in ``UNSUPPORTED``.

Importing this package needs neither torch nor TRL.
"""
