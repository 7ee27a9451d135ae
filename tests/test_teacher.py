"""KD teachers: a teacher run of this project must have finished (issue: a stopped teacher
silently hands its students a weaker network)."""
import json

import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax.training import loop
from distill_jax.training import teacher as teacher_lib
from helpers import override, synthetic_data


def _data():
    return synthetic_data(per_class=4, test_per_class=2)


def _teacher_config(**over):
    c = config_lib.default_config()
    c.num_seeds, c.model.width, c.model.depth = 1, 4, 2
    c.train.epochs, c.train.batch_size, c.train.augment.k = 4, 8, 0
    c.eval_every_epochs = c.checkpoint_every_epochs = 1
    return override(c, **{f"train.{k}": v for k, v in over.items()})


@pytest.fixture(scope="module")
def stopped_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    loop.train_and_evaluate(_teacher_config(stop_after_epochs=2), path, data=_data())
    return path


def test_unfinished_teacher_is_refused_with_its_epoch_and_how_to_finish_it(stopped_teacher):
    with pytest.raises(teacher_lib.TeacherError) as err:
        teacher_lib.load_teacher(stopped_teacher)
    message = str(err.value)
    assert str(stopped_teacher) in message and "reached epoch 2 of 4" in message
    assert f"--workdir {stopped_teacher}" in message and "allow_unfinished_teacher" in message


def test_unfinished_teacher_is_accepted_on_purpose(stopped_teacher):
    module, variables = teacher_lib.load_teacher(stopped_teacher, allow_unfinished=True)
    assert module.apply(variables, np.zeros((2, 8, 8, 1), np.float32), train=False).shape == (2, 4)


def test_a_student_run_refuses_an_unfinished_teacher_unless_allowed(stopped_teacher, tmp_path):
    student = _teacher_config(epochs=1)
    student.train.kd.enabled, student.train.kd.teacher_path = True, str(stopped_teacher)
    with pytest.raises(teacher_lib.TeacherError, match="not finished"):
        loop.train_and_evaluate(student, tmp_path / "refused", data=_data())
    student.train.kd.allow_unfinished_teacher = True
    assert loop.train_and_evaluate(student, tmp_path / "allowed", data=_data())["finished"]


def test_teacher_finished_then_resumed_elsewhere_is_accepted(tmp_path):
    """Finishing the stopped run with the same command makes it a valid teacher."""
    loop.train_and_evaluate(_teacher_config(stop_after_epochs=2), tmp_path, data=_data())
    loop.train_and_evaluate(_teacher_config(), tmp_path, data=_data())
    assert json.loads((tmp_path / "results.json").read_text())["finished"]
    teacher_lib.load_teacher(tmp_path)  # no error
