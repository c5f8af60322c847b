"""scripts/check_upstream_tests.py on a small suite whose outcomes are known by construction."""

import importlib.util
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_upstream_tests.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_upstream_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tests/ package like Detectron2's: passes, failures, a setup error, a broken module."""
    tests = tmp_path_factory.mktemp("checkout") / "tests"
    (tests / "layers").mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    (tests / "layers" / "__init__.py").write_text("")
    (tests / "layers" / "test_ops.py").write_text(
        textwrap.dedent(
            """
            import unittest

            import pytest


            class TestOps(unittest.TestCase):
                def test_fine(self):
                    import detectron2  # the installed one, not the checkout's beside tests/

                    self.assertTrue(hasattr(detectron2, "__version__"))

                def test_rotated(self):
                    raise AttributeError("detectron2._C.nms_rotated")

                @unittest.skip("needs a GPU")
                def test_cuda(self):
                    pass


            @pytest.fixture
            def weights():
                raise OSError("no network")


            def test_download(weights):
                pass


            def test_flaky_fixed():
                pass
            """
        )
    )
    (tests / "test_broken_import.py").write_text("import caffe2_is_gone\n")
    (tests / "test_skips_itself.py").write_text(
        "import pytest\n\npytest.skip('no caffe2', allow_module_level=True)\n"
    )
    # A checkout's own (uninstalled) package beside tests/ must never be the one tested.
    (tests.parent / "detectron2").mkdir()
    (tests.parent / "detectron2" / "__init__.py").write_text("raise ImportError('checkout')\n")
    return tests


@pytest.fixture(scope="module")
def outcomes(checker, suite):
    return checker.run_suite(suite, [])


@pytest.fixture
def main_on_suite(checker, suite, outcomes, monkeypatch):
    """The checker's command line, reusing the one run of the suite."""
    monkeypatch.setattr(checker, "run_suite", lambda tests_dir, args: dict(outcomes))
    return lambda expected: checker.main([str(suite), "--expected", str(expected)])


def write_list(path, lines):
    path.write_text("# category  test  # reason\n" + "\n".join(lines) + "\n")
    return path


def test_outcomes_of_each_test(outcomes):
    assert outcomes == {
        "tests/layers/test_ops.py::TestOps::test_fine": "passed",
        "tests/layers/test_ops.py::TestOps::test_rotated": "failed",
        "tests/layers/test_ops.py::TestOps::test_cuda": "skipped",
        "tests/layers/test_ops.py::test_download": "error",
        "tests/layers/test_ops.py::test_flaky_fixed": "passed",
        "tests/test_broken_import.py": "error",
        "tests/test_skips_itself.py": "skipped",
    }


def test_all_failures_listed_passes(main_on_suite, tmp_path, capsys):
    expected = write_list(
        tmp_path / "expected.txt",
        [
            "compiled-op  tests/layers/test_ops.py::TestOps::test_rotated  # rotated NMS",
            "network      tests/layers/test_ops.py::test_down*  # model-zoo weights",
            "caffe2       tests/test_broken_import.py  # caffe2 is not in torch 2",
        ],
    )
    assert main_on_suite(expected) == 0
    out = capsys.readouterr().out
    assert "| passed | 2 |" in out and "| skipped | 2 |" in out
    assert "| failed: compiled-op | 1 |" in out and "| failed: caffe2 | 1 |" in out
    assert "| total | 7 |" in out


def test_new_failure_and_fixed_entry_are_reported(main_on_suite, tmp_path, capsys):
    expected = write_list(
        tmp_path / "expected.txt",
        [
            "compiled-op  tests/layers/test_ops.py::TestOps::test_rotated  # rotated NMS",
            "other        tests/layers/test_ops.py::test_flaky_fixed  # was broken",
            "network      tests/test_renamed.py::*  # gone from the suite",
        ],
    )
    assert main_on_suite(expected) == 1
    out = capsys.readouterr().out
    assert "NEW FAILURE (error): tests/layers/test_ops.py::test_download" in out
    assert "NEW FAILURE (error): tests/test_broken_import.py" in out
    assert "EXPECTED TO FAIL, NOW PASSES: tests/layers/test_ops.py::test_flaky_fixed" in out
    assert "ENTRY MATCHES NO TEST: tests/test_renamed.py::*" in out
    assert "4 difference(s)" in out


@pytest.mark.parametrize(
    "line, message",
    [
        ("gpu  tests/x.py::test_a  # needs CUDA", "category one of"),
        ("network  tests/x.py::test_a", "gives no reason"),
        ("network  # only a reason", "category one of"),
    ],
)
def test_malformed_list_is_named(checker, tmp_path, line, message):
    path = write_list(tmp_path / "expected.txt", [line])
    with pytest.raises(SystemExit, match=message) as info:
        checker.read_expected(path)
    assert "expected.txt:2" in str(info.value)
