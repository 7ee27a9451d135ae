"""A rerun of a finished reproduction checks what each finished cell trained on, not only its
config: a teacher retrained in place on other data stops the rerun instead of leaving its
students' results standing on a teacher that no longer exists."""
import shutil

import ml_collections
import pytest

from distill_jax.experiments import reproduce
from distill_jax.training import loop, workdir_io
from test_evaluation import _cache, _reproduce_config, _tiny_data, tiny_experiment  # noqa: F401 (fixture)


def _listing(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_teacher_retrained_in_place_on_other_data_stops_the_rerun(tmp_path, tiny_experiment):  # noqa: F811 (fixture)
    data, other = _tiny_data(seed=0), _tiny_data(seed=1)
    config = _reproduce_config(tiny_experiment)
    reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))
    assert reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))  # unchanged: fine

    teacher_config = workdir_io.recorded_config(tmp_path / "teacher")
    shutil.rmtree(tmp_path / "teacher")  # the same teacher config, trained again on other data
    loop.train_and_evaluate(ml_collections.ConfigDict(teacher_config), tmp_path / "teacher", data=other)
    before = _listing(tmp_path / "student")
    with pytest.raises(workdir_io.RunConfigError, match="other inputs"):
        reproduce.run_reproduction(config, tmp_path, data_cache=_cache(config, tmp_path, data))
    assert _listing(tmp_path / "student") == before
