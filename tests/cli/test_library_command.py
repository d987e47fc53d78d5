"""`celvern library list|show|instantiate` on a fixture library, and the real library under policies/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from cli.library_command import DEFAULT_LIBRARY, LIBRARY_VARIABLE
from cli.main import celvern

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = Path(__file__).parent / "fixtures" / "library"
PODS = LIBRARY / "pods.yaml"


def library(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(celvern, ["library", *map(str, args)], env=env)


def on_fixture(*args: str | Path) -> Result:
    return library(*args, "--library", LIBRARY)


# --- list and show --------------------------------------------------------------------------------------------


def test_list_table() -> None:
    result = on_fixture("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [cell.strip() for cell in lines[1].strip("│").split("│")] == [
        "NAME",
        "CATEGORY",
        "SEVERITY",
        "KIND",
        "PARAMETERS",
        "TITLE",
    ]
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines[3:-1]]
    assert rows == [
        ["limit-memory", "Governance: FinOps", "medium", "ValidatingPolicy", "4", "Limit Container Memory"],
        ["require-labels", "Governance: General", "low", "ValidatingPolicy", "3", "Require Labels"],
        ["add-team-label", "Mutation Defaults", "low", "MutatingPolicy", "1", "Add Team Label"],
    ]
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal


def test_list_json_with_a_category() -> None:
    result = on_fixture("list", "--category", "governance", "-o", "json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [entry["name"] for entry in listed] == ["limit-memory", "require-labels"]
    assert listed[1]["parameters"][2] == {
        "name": "tier",
        "type": "string",
        "description": "The tier label value Pods must have, or any.",
        "enum": ["frontend", "backend", "any"],
        "default": "any",
    }
    assert listed[0]["path"] == str(LIBRARY / "validating" / "governance" / "limit-memory" / "policy.yaml")


def test_list_an_unknown_category() -> None:
    result = on_fixture("list", "--category", "security")
    assert result.exit_code == 2
    assert result.stderr == (
        "no policies in category 'security'; categories in use: Governance: General, Governance: FinOps, "
        "Mutation Defaults\n"
    )


def test_the_library_comes_from_the_environment() -> None:
    result = library("list", "-o", "json", env={LIBRARY_VARIABLE: str(LIBRARY)})
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


def test_the_default_library_is_the_repository_policies() -> None:
    assert DEFAULT_LIBRARY == ROOT / "policies"


def test_show_text() -> None:
    result = on_fixture("show", "limit-memory")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Name:         limit-memory\n"
        "Kind:         ValidatingPolicy\n"
        "Title:        Limit Container Memory\n"
        "Category:     Governance: FinOps\n"
        "Severity:     medium\n"
        "Subject:      Pod\n"
        f"Path:         {LIBRARY / 'validating/governance/limit-memory/policy.yaml'}\n"
        "\n"
        "Description:\n"
        "  Container memory limits must not exceed maxMemory, and a Pod may have at most maxContainers\n"
        "  containers.\n"
        "\n"
        "Parameters:\n"
        "  maxMemory (quantity)\n"
        "    default: '1Gi'\n"
        "    Largest memory limit of a container.\n"
        "  maxContainers (integer)\n"
        "    default: 4\n"
        "    Most containers in a Pod.\n"
        "  requireLimits (boolean)\n"
        "    default: false\n"
        "    Whether every container must set a memory limit.\n"
        "  exemptions (object)\n"
        "    default: [{'name': 'istio-proxy'}]\n"
        "    Containers exempt from the memory limit, as a list of maps with a name key.\n"
    )


def test_show_enum_and_json_and_yaml() -> None:
    text = on_fixture("show", "require-labels")
    assert "  tier (string)\n    allowed: frontend, backend, any\n    default: 'any'\n" in text.stdout
    as_json = json.loads(on_fixture("show", "require-labels", "-o", "json").stdout)
    as_yaml = yaml.safe_load(on_fixture("show", "require-labels", "-o", "yaml").stdout)
    assert as_json == as_yaml
    assert as_json["parameters"][0]["default"] == ["team"]
    assert as_json["pssControl"] is None


def test_show_an_unknown_policy() -> None:
    result = on_fixture("show", "require-label")
    assert result.exit_code == 2
    assert result.stderr == f"no policy named 'require-label' in the library {LIBRARY}; did you mean require-labels?\n"


# --- instantiate ----------------------------------------------------------------------------------------------


def apply(policy: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(celvern, ["apply", str(policy), "-r", str(PODS), *map(str, args)])


def test_an_instance_behaves_per_its_parameters(tmp_path: Path) -> None:
    library_default = tmp_path / "default.yaml"
    assert on_fixture("instantiate", "limit-memory", "-o", library_default).exit_code == 0
    failed = apply(library_default)
    assert failed.exit_code == 1, failed.output
    assert "container memory limits must be set and at most 1Gi" in failed.stdout

    raised = tmp_path / "raised.yaml"
    result = on_fixture("instantiate", "limit-memory", "--set", "maxMemory=2Gi", "--action", "Deny", "-o", raised)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"wrote ValidatingPolicy limit-memory to {raised}\n"
    instance = yaml.safe_load(raised.read_text())
    assert instance["spec"]["validationActions"] == ["Deny"]
    assert instance["spec"]["variables"][0] == {"name": "maxMemory", "expression": "'2Gi'"}
    passed = apply(raised)
    assert passed.exit_code == 0, passed.output
    assert "pass: 1, fail: 0" in passed.stdout


def test_an_object_parameter(tmp_path: Path) -> None:
    output = tmp_path / "exempt.yaml"
    result = on_fixture(
        "instantiate", "limit-memory", "--set", "exemptions=[{name: app, reason: sidecar}, {name: x}]", "-o", output
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(output.read_text())["spec"]["variables"][3] == {
        "name": "exemptions",
        "expression": "[{'name': 'app', 'reason': 'sidecar'}, {'name': 'x'}]",
    }
    assert apply(output).exit_code == 0  # the only container is exempt


def test_instances_are_scoped_to_namespaces(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "apiVersion: cli.kyverno.io/v1alpha1\nkind: Value\nnamespaces:\n"
        "  - metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}\n"
        "  - metadata: {name: dev, labels: {kubernetes.io/metadata.name: dev}}\n"
    )
    elsewhere, here = tmp_path / "elsewhere.yaml", tmp_path / "here.yaml"
    assert on_fixture("instantiate", "limit-memory", "--namespaces", "dev,qa", "-o", elsewhere).exit_code == 0
    scoped = on_fixture("instantiate", "limit-memory", "--namespaces", "dev", "--namespaces", "shop", "-o", here)
    assert scoped.exit_code == 0, scoped.output
    selector = yaml.safe_load(here.read_text())["spec"]["matchConstraints"]["namespaceSelector"]
    assert selector == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["dev", "shop"]}]
    }
    assert apply(elsewhere, "-f", values).exit_code == 0  # the pod is in shop
    assert apply(here, "-f", values).exit_code == 1


def test_instantiate_to_stdout_with_a_name() -> None:
    result = on_fixture(
        "instantiate", "require-labels", "--set", "requiredLabels=team,app", "--set", "tier=backend", "--name", "labels"
    )
    assert result.exit_code == 0, result.output
    instance = yaml.safe_load(result.stdout)
    assert instance["metadata"]["name"] == "labels"
    assert instance["spec"]["validationActions"] == ["Audit"]  # as in the library
    assert [variable["expression"] for variable in instance["spec"]["variables"][:3]] == [
        "['team', 'app']",
        "'^[a-z][-a-z0-9]*$'",
        "'backend'",
    ]


def test_a_mutating_instance(tmp_path: Path) -> None:
    output = tmp_path / "team.yaml"
    result = on_fixture("instantiate", "add-team-label", "--set", "team=payments", "-o", output)
    assert result.exit_code == 0, result.output
    unlabelled = tmp_path / "pod.yaml"
    unlabelled.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n")
    applied = CliRunner().invoke(celvern, ["apply", str(output), "-r", str(unlabelled)])
    assert applied.exit_code == 0, applied.output
    assert "team: payments" in applied.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("limit-memory", "--set", "maxMemory=lots"),
            "invalid value for parameter 'maxMemory' (quantity): 'lots' is not a Kubernetes quantity",
        ),
        (
            ("limit-memory", "--set", "maxContainers=many"),
            "invalid value for parameter 'maxContainers' (integer): expected an integer, got 'many'",
        ),
        (
            ("limit-memory", "--set", "requireLimits=yes"),
            "invalid value for parameter 'requireLimits' (boolean): expected true or false, got 'yes'",
        ),
        (
            ("require-labels", "--set", "tier=middle"),
            "invalid value for parameter 'tier' (string, one of: frontend, backend, any): 'middle' is not one of "
            "the allowed values",
        ),
        (
            ("require-labels", "--set", "namePattern=(?=x)"),
            "invalid value for parameter 'namePattern' (regex): '(?=x)' is not an RE2 regular expression",
        ),
        (
            ("require-labels", "--set", "requiredLabels=[a, 1]"),
            "invalid value for parameter 'requiredLabels' (list[string]): item 2: expected a string, got integer 1",
        ),
        (
            ("require-labels", "--set", "requiredLabel=a"),
            "unknown parameter 'requiredLabel' for policy require-labels; did you mean 'requiredLabels'? "
            "(its parameters: requiredLabels (list[string]), namePattern (regex), tier (string))",
        ),
        (("require-labels", "--set", "tier"), "Invalid value for '--set': expected key=value, got 'tier'"),
        (("require-labels", "--set", "tier=any", "--set", "tier=backend"), "tier is set twice"),
        (("require-labels", "--action", "Block"), "Invalid value for '--action'"),
        (("require-labels", "--namespaces", "Shop"), "invalid namespace name 'Shop'"),
        (("require-labels", "--namespaces", "a,,b"), "empty namespace name"),
        (("require-labels", "--name", "Labels"), "invalid policy name 'Labels'"),
        (
            ("add-team-label", "--action", "Deny"),
            "an action (Deny, Warn, Audit) applies to validating policies only; add-team-label is a MutatingPolicy",
        ),
        (("no-such-policy",), "no policy named 'no-such-policy'"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    output = tmp_path / "instance.yaml"
    result = on_fixture("instantiate", *args, "-o", output)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not output.exists()


def test_actions_are_case_insensitive() -> None:
    result = on_fixture("instantiate", "require-labels", "--action", "warn")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["spec"]["validationActions"] == ["Warn"]


def test_an_instance_that_does_not_compile_is_not_written(tmp_path: Path) -> None:
    broken = tmp_path / "validating" / "governance" / "broken" / "policy.yaml"
    broken.parent.mkdir(parents=True)
    text = (LIBRARY / "validating" / "governance" / "require-labels" / "policy.yaml").read_text()
    text = text.replace("name: require-labels", "name: broken").replace("key in variables.labels)", "key in")
    broken.write_text(text)
    output = tmp_path / "instance.yaml"
    result = library("instantiate", "broken", "--library", tmp_path, "-o", output)
    assert result.exit_code == 2, result.output
    assert "<instance broken>" in result.stderr
    assert result.stderr.endswith("the instance of broken does not compile, nothing written\n")
    assert not output.exists()


def test_a_malformed_library_is_a_located_error(tmp_path: Path) -> None:
    broken = tmp_path / "validating" / "governance" / "limit-memory" / "policy.yaml"
    broken.parent.mkdir(parents=True)
    text = (LIBRARY / "validating" / "governance" / "limit-memory" / "policy.yaml").read_text()
    broken.write_text(text.replace("type: integer", "type: int"))
    result = library("list", "--library", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        f"{broken}:18:15: metadata.annotations[celvern.io/parameters][1].type: unknown type 'int' for parameter "
        "'maxContainers' (expected one of: string, integer, boolean, quantity, regex, list[string], list[integer], "
        "object)\n"
    )


# --- the real library -----------------------------------------------------------------------------------------


def test_the_repository_library_loads() -> None:
    result = library("list", "--library", ROOT / "policies", "-o", "json")
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed, "the library is empty"
    assert len({entry["name"] for entry in listed}) == len(listed)
