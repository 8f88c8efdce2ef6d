"""Turn a ComfyUI workflow in UI format (what the frontend saves and example_workflows/ holds) into the API format
that ``POST /prompt`` and ComfyUI's executor take, and check its widget values against the node definitions.

No ComfyUI import: node definitions come as a mapping ``class_type -> {"input": {"required": {...}, "optional":
{...}}}`` (the shape of ``/object_info``) or, in-process, from each class's ``INPUT_TYPES()``.

The frontend's rules that matter here: an input whose type is INT, FLOAT, STRING, BOOLEAN or a list of choices (a
COMBO) is a widget unless it says ``forceInput``; the widgets' values are stored in ``widgets_values`` in the order
of the inputs (required, then optional), with one extra value after an input that has ``control_after_generate``
("fixed", "randomize", ...) and after a COMBO with ``image_upload`` (the upload button). A widget input wired to a
link keeps its slot in ``widgets_values``; the link wins.
"""
from __future__ import annotations

import copy

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
FRONTEND_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")  # no server class; never in an API prompt
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    """The workflow does not fit the node definitions."""


def node_definitions_from_classes(node_class_mappings):
    """``/object_info``-shaped definitions built from classic node classes (in-process, no server)."""
    return {name: {"input": cls.INPUT_TYPES()} for name, cls in node_class_mappings.items()}


def _ordered_inputs(definition):
    inputs = definition.get("input", {})
    for section in ("required", "optional"):
        yield from (inputs.get(section) or {}).items()


def is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_slots(spec) -> int:
    """How many entries of ``widgets_values`` one widget input takes."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return 1 + bool(options.get("control_after_generate")) + bool(options.get("image_upload"))


def _default(spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def widget_values(node, definition) -> dict:
    """``{input name: value}`` for every widget of a UI-format ``node`` (the defaults when it saved no values)."""
    if node.get("widgets_values") is None:  # the frontend then shows each widget's default
        return {name: _default(spec) for name, spec in _ordered_inputs(definition) if is_widget(spec)}
    values = list(node["widgets_values"])
    out = {}
    i = 0
    for name, spec in _ordered_inputs(definition):
        if not is_widget(spec):
            continue
        if i >= len(values):
            raise WorkflowError(f"node {node['id']} ({node['type']}) has {len(values)} widget values; input {name!r} "
                                f"has none (the workflow was saved with another version of the node)")
        out[name] = values[i]
        i += widget_slots(spec)
    if i != len(values):
        raise WorkflowError(f"node {node['id']} ({node['type']}) has {len(values)} widget values, its definition "
                            f"takes {i}: the workflow was saved with another version of the node")
    return out


def ui_to_api(workflow, definitions) -> dict:
    """The API-format prompt ``{node id: {"class_type", "inputs"}}`` of a UI-format workflow."""
    links = {}
    for link in workflow.get("links", []):
        link_id, from_node, from_slot = link[0], link[1], link[2]
        links[link_id] = [str(from_node), from_slot]
    skipped = {n["id"] for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            raise WorkflowError(f"node {node['id']} ({kind}) is muted or bypassed: unmute it or remove it")
        if kind not in definitions:
            raise WorkflowError(f"node {node['id']} has type {kind!r}, which this ComfyUI does not know (a missing "
                                f"custom node pack?)")
        definition = definitions[kind]
        inputs = dict(widget_values(node, definition))
        for socket in node.get("inputs") or []:
            link_id = socket.get("link")
            if link_id is None:
                continue
            source = links[link_id]
            if int(source[0]) in skipped:
                raise WorkflowError(f"node {node['id']} input {socket['name']!r} comes from a frontend-only node")
            inputs[socket["name"]] = source
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return prompt


def check_widget_values(workflow, definitions, model_inputs=()) -> list:
    """Problems with the workflow's widget values: a value outside an INT/FLOAT range, a choice not offered by a
    COMBO (except the inputs named in ``model_inputs``, model files a user downloads), a wrong type. [] if none."""
    problems = []
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        definition = definitions.get(node["type"])
        if definition is None:
            problems.append(f"node {node['id']}: unknown type {node['type']!r}")
            continue
        try:
            values = widget_values(node, definition)
        except WorkflowError as e:
            problems.append(str(e))
            continue
        specs = dict(_ordered_inputs(definition))
        for name, value in values.items():
            kind = specs[name][0]
            options = specs[name][1] if len(specs[name]) > 1 and isinstance(specs[name][1], dict) else {}
            where = f"node {node['id']} ({node['type']}) {name}={value!r}"
            if isinstance(kind, list):
                if value not in kind and name not in model_inputs:
                    problems.append(f"{where}: not one of {kind[:8]}")
            elif kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{where}: not a number")
                elif ("min" in options and value < options["min"]) or ("max" in options and value > options["max"]):
                    problems.append(f"{where}: outside [{options.get('min')}, {options.get('max')}]")
                elif kind == "INT" and value != int(value):
                    problems.append(f"{where}: not an integer")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a string")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a boolean")
    return problems


def set_widget(workflow, node_type, name, value, definitions):
    """A copy of ``workflow`` with widget ``name`` of every node of ``node_type`` set to ``value``."""
    workflow = copy.deepcopy(workflow)
    found = False
    for node in workflow["nodes"]:
        if node["type"] != node_type:
            continue
        index = 0
        for input_name, spec in _ordered_inputs(definitions[node_type]):
            if not is_widget(spec):
                continue
            if input_name == name:
                node["widgets_values"][index] = value
                found = True
                break
            index += widget_slots(spec)
    if not found:
        raise WorkflowError(f"the workflow has no {node_type} node with a widget {name!r}")
    return workflow
