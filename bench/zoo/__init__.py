"""The fault zoo: base programs × fault mutations × severities × seeds (``docs/zoo.md``).

``load_programs()`` finds every base program (one file each in ``programs/``, defining
``PROGRAM = Program(...)``); ``SPLIT`` assigns each to train or test, fixed here before any rule
was tuned on the zoo; ``operators.OPERATORS`` holds the fault mutations; ``plan.zoo_runs()``
enumerates the runs.
"""

from __future__ import annotations

import importlib
import pkgutil

from zoo._spec import Program

__all__ = ["SPLIT", "TEST_PROGRAMS", "TRAIN_PROGRAMS", "load_programs"]

# The split, by base program, written before any rule is tuned on the zoo (issue 24). The rule:
# every family (MLP, CNN, RNN, transformer, linear/regression) has programs on both sides, and
# the test side differs from the train side in data set or optimizer for each family, so a rule
# fitted to train cannot key on a data set or an optimizer. Calibration reads TRAIN_PROGRAMS
# only; reported figures are on TEST_PROGRAMS. Do not move a program after seeing results.
TRAIN_PROGRAMS: tuple[str, ...] = (
    "mlp_digits_adam",
    "mlp_wine_nesterov_step",
    "tabular_classification_rmsprop",
    "linreg_diabetes_sgd",
    "autoencoder_digits_adam",
    "cnn_digits_momentum",
    "resnet_digits_nesterov_cosine",
    "gru_seq_adam",
    "rnn_seq_adagrad",
    "transformer_encoder_adamw_warmup",
)
TEST_PROGRAMS: tuple[str, ...] = (
    "mlp_moons_sgd",
    "tabular_breast_cancer_adamw_cosine",
    "logistic_iris_sgd",
    "teacher_student_rmsprop",
    "cnn_bn_digits_adam_onecycle",
    "lstm_seq_adam_step",
    "gpt_markov_adamw",
)
SPLIT: dict[str, str] = {
    **{p: "train" for p in TRAIN_PROGRAMS},
    **{p: "test" for p in TEST_PROGRAMS},
}


def load_programs() -> dict[str, Program]:
    """Every base program by name; a file without ``PROGRAM`` or outside ``SPLIT`` is an error."""
    from zoo import programs

    found: dict[str, Program] = {}
    for info in sorted(pkgutil.iter_modules(programs.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"zoo.programs.{info.name}")
        program = getattr(module, "PROGRAM", None)
        if not isinstance(program, Program) or program.name != info.name:
            raise ImportError(f"bench/zoo/programs/{info.name}.py: PROGRAM missing or misnamed")
        if info.name not in SPLIT:
            raise ImportError(f"bench/zoo/programs/{info.name}.py is in neither split")
        found[info.name] = program
    return found
