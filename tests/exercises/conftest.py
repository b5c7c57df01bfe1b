"""
The exercise checkers grade one solutions file: tests/exercises/reference_solutions.py unless --solution names
another.

    pytest tests/exercises --solution my_solutions.py           # all seven
    pytest tests/exercises/test_ex4_greedy_verify.py --solution my_solutions.py   # one
"""

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--solution", default=None, metavar="FILE",
                     help="the Python file with your solutions to docs/exercises.md "
                          "(default: tests/exercises/reference_solutions.py)")


@pytest.fixture(scope="session")
def solution(request):
    """The solutions module under test."""
    # getoption's default: when the whole suite runs from the repository root, this conftest is found during
    # collection, after the command line was parsed, and the option may not exist
    given = request.config.getoption("--solution", default=None)
    path = Path(request.config.invocation_params.dir, given) if given else HERE / "reference_solutions.py"
    if not path.is_file():
        pytest.fail(f"--solution {given}: no such file (give the path of your solutions file)", pytrace=False)
    spec = importlib.util.spec_from_file_location("exercise_solutions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def solved(solution):
    """solved(name): the function `name` of the solutions module, or a clear failure if it has none."""
    def get(name):
        fn = getattr(solution, name, None)
        if fn is None:
            pytest.fail(f"{Path(solution.__file__).name} has no function {name}: see docs/exercises.md for its "
                        f"signature", pytrace=False)
        return fn
    return get


@pytest.fixture(scope="session")
def shipped_model():
    """The shipped 32-layer LayerSkip model and its tokenizer."""
    from model_io import load_model
    return load_model(HERE.parents[1] / "checkpoints" / "layerskip-python-deep.pt")
