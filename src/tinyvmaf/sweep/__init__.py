"""A sweep's bookkeeping, whatever launcher runs its jobs: what it was asked (``ledger``: the plan
of its jobs), what its runs say of it (``status``: finished, failed, running or dead, missing) and
the verdict on each job (``verdicts``: the files a failed job leaves where its launching process
finds them). Hydra's side is apart: ``callbacks`` (the launching process's hooks) and ``launcher``
(what tinyvmaf adds to hydra-submitit-launcher).
"""
