"""A Triton Inference Server model repository for deploy-unet artifacts (``deploy-unet triton-repo``).

Per artifact a model folder ``NAME/config.pbtxt`` + ``NAME/1/model.onnx`` (platform ``onnxruntime_onnx``) or
``NAME/1/model.plan`` (``tensorrt_plan``), everything in the config taken from the artifact itself:

- names, dtypes, dims from the graph / manifest: ``[C, -1, -1]`` for dynamic H/W, the fixed dims of a
  static export; with batching the batch dim is left out of ``dims`` (Triton prepends it);
- ``max_batch_size``: an engine's profile max batch, never above it (Triton refuses to load a config whose
  max batch exceeds the engine's: ``configuration specified max-batch N but TensorRT engine only supports
  max-batch M``); the profile's H/W range, which the config schema cannot express and which fails each
  request outside it, as a comment and in the repository README;
- ``dynamic_batching`` (Triton batches only requests of equal shape for these ``-1`` dims),
  ``instance_group``, and ``model_warmup`` at the profile's opt shape;
- ``--accelerator tensorrt`` (ONNX Runtime backend's TensorRT execution provider): ``precision_mode`` from
  what the graph is (FP16 for an fp16 cast graph, INT8 for Q/DQ, with none of the calibration-table keys,
  which make ORT's session creation fail on a Q/DQ model), engine and timing caches on, and the
  ``trt_profile_*_shapes`` from build-engine's default profile widened to the max batch;
- ``--ensemble``: python-backend ``NAME_preprocess`` (uint8 H x W x C image of any size -> the model's
  normalized NCHW, padded to the divisor as the metadata says) and ``NAME_postprocess`` (argmax -> uint8
  mask cropped back to the image), and ``NAME_ensemble`` chaining the three: a client sends an image and
  gets a mask (a few hundred KB instead of tens of MB of logits). Their code needs only NumPy: the
  pre/post-processing of ``deploy_unet.processing`` is copied beside each ``model.py``.

Every config is parsed back with Triton's own schema when tritonclient is installed (``pbtxt.check_model_config``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_unet import __version__
from deploy_unet.errors import ArtifactError, ConfigError
from deploy_unet.fileio import sha256_file
from deploy_unet.serving.artifact import TRITON_TYPES, Artifact, TensorInfo, mask_numpy_dtype, read_artifact
from deploy_unet.serving.pbtxt import Comment, Enum, check_model_config, map_entries, to_pbtxt

ACCELERATORS = ("none", "tensorrt")
KINDS = ("gpu", "cpu")
DEFAULT_MAX_BATCH = 8  # ONNX with a dynamic batch: what a repository allows unless told otherwise
DEFAULT_QUEUE_DELAY_US = 100
IMAGE_INPUT = "image"
IMAGE_SIZE = "image_size"
MASK_OUTPUT = "mask"
VENDORED_PACKAGE = "deploy_unet_processing"  # the copy of deploy_unet's processing code beside model.py
# What the vendored package holds: the processing module and the two it imports.
_VENDORED_MODULES = ("errors", "shapes", "processing")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class RepositoryOptions:
    accelerator: str = "none"  # ONNX only: "tensorrt" = ORT backend's TensorRT execution provider
    instances: int = 1
    kind: str = "gpu"  # instance_group kind of the main models
    max_batch: int | None = None  # default: the engine profile's max batch, else DEFAULT_MAX_BATCH
    dynamic_batching: bool = True
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    ensemble: bool = False
    warmup: bool = True

    def check(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"--accelerator {self.accelerator!r} is not valid; choose one of: {', '.join(ACCELERATORS)}")
        if self.kind not in KINDS:
            raise ConfigError(f"--kind {self.kind!r} is not valid; choose one of: {', '.join(KINDS)}")
        if self.instances < 1:
            raise ConfigError(f"--instances {self.instances} must be at least 1")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch} must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us {self.max_queue_delay_us} must be >= 0")
        if self.accelerator == "tensorrt" and self.kind == "cpu":
            raise ConfigError("--accelerator tensorrt runs on a GPU; drop --kind cpu (or the accelerator)")


@dataclass
class ModelFolder:
    """One model written into the repository (for the summary and the README)."""

    name: str
    platform: str  # "onnxruntime_onnx" | "tensorrt_plan" | "python" | "ensemble"
    max_batch_size: int
    source: str = ""
    hw_rule: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Repository:
    path: Path
    models: list[ModelFolder]
    parsed_with_triton_schema: bool


def model_name_for(path: Path) -> str:
    """The default model name: the artifact's stem, with characters Triton names avoid replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"model name {name!r} may hold only letters, digits, '.', '_' and '-'")
    return name


def resolve_max_batch(artifact: Artifact, requested: int | None) -> int:
    """Triton's ``max_batch_size``: 0 for a fixed-batch graph, else requested/default, never above the engine's."""
    if not artifact.batch_dynamic:
        if requested is not None:
            raise ConfigError(
                f"{artifact.path.name} has a fixed batch of {artifact.input.dims[0]} (a static export), so its "
                f"config takes the full shape and max_batch_size 0; drop --max-batch {requested}"
            )
        return 0
    limit = artifact.max_batch_limit
    if limit is not None:
        if requested is not None and requested > limit:
            raise ConfigError(
                f"--max-batch {requested} exceeds {artifact.path.name}'s optimization profile (max batch {limit}); "
                f"Triton would refuse to load it ('configuration specified max-batch {requested} but TensorRT engine "
                f"only supports max-batch {limit}'); pass --max-batch {limit} or less, or rebuild the engine with "
                f"--max-shape {requested}x..."
            )
        return requested or limit
    return requested or DEFAULT_MAX_BATCH


def _io(tensor: TensorInfo, batching: bool, dims: tuple[int, ...] | None = None) -> dict[str, Any]:
    dims = dims if dims is not None else (tensor.dims[1:] if batching else tensor.dims)
    return {"name": tensor.name, "data_type": Enum(tensor.triton_type), "dims": list(dims)}


def _shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def main_model_config(artifact: Artifact, name: str, options: RepositoryOptions) -> tuple[dict, ModelFolder]:
    """The config of the artifact's own model (ONNX Runtime or TensorRT platform)."""
    max_batch = resolve_max_batch(artifact, options.max_batch)
    batching = max_batch > 0
    is_engine = artifact.kind == "engine"
    if is_engine and options.kind == "cpu":
        raise ConfigError(f"{artifact.path.name} is a TensorRT engine: it runs on a GPU only; drop --kind cpu")
    if is_engine and options.accelerator != "none":
        raise ConfigError(f"--accelerator applies to ONNX files (ONNX Runtime backend), not the engine {artifact.path.name}")
    platform = "tensorrt_plan" if is_engine else "onnxruntime_onnx"
    folder = ModelFolder(name, platform, max_batch, source=artifact.path.name, hw_rule=artifact.hw_rule(),
                         notes=list(artifact.notes))

    config: dict[str, Any] = {
        "#source": Comment(f"generated by deploy-unet {__version__} from {artifact.path.name} "
                           f"({artifact.info.arch}, {artifact.precision}, {artifact.info.num_classes} classes)"),
        "#hw": Comment(f"input {artifact.input.name}: {artifact.hw_rule()}"),
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch,
        "input": [_io(artifact.input, batching)],
        "output": [_io(o, batching) for o in artifact.outputs],
        "instance_group": [{"count": options.instances, "kind": Enum(f"KIND_{options.kind.upper()}")}],
    }
    if batching and max_batch > 1 and options.dynamic_batching:
        config["#batching"] = Comment("Triton batches only requests of equal H and W (the -1 dims); "
                                      "others run as separate batches")
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    if options.accelerator == "tensorrt":
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": map_entries(ort_tensorrt_parameters(artifact, name, max_batch))}
        ]}}
        folder.notes.append(f"ONNX Runtime TensorRT EP, precision_mode {_precision_mode(artifact.precision)}")
    if options.warmup:
        config["model_warmup"] = [warmup_entry(artifact, max_batch)]
    return config, folder


def _precision_mode(precision: str) -> str:
    return {"fp16": "FP16", "int8": "INT8"}.get(precision, "FP32")


def _accelerator_profile(artifact: Artifact, max_batch: int):
    """build-engine's default profile (min one divisor step, opt the export shape, max twice the export H/W),
    its batch widened to what the config lets Triton send."""
    profile = artifact.default_profile
    if profile is None:
        raise ConfigError(
            f"{artifact.path.name} records no export shape, so no TensorRT profile can be derived for "
            "--accelerator tensorrt; re-export it with deploy-unet export"
        )
    batch = max(max_batch, 1)
    return profile.min, profile.opt, (batch, *profile.max[1:])


def ort_tensorrt_parameters(artifact: Artifact, name: str, max_batch: int) -> dict[str, str]:
    """The ONNX Runtime backend's TensorRT EP keys (onnxruntime_backend README): precision from the graph,
    engine + timing caches on, explicit profile shapes; never a calibration table (a Q/DQ graph carries its
    scales, and ORT refuses a table for it)."""
    minimum, opt, maximum = _accelerator_profile(artifact, max_batch)
    key = artifact.input.name
    cache = f"/tmp/deploy_unet_trt_cache/{name}"
    params = {"precision_mode": _precision_mode(artifact.precision)}
    params.update({
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": f"{key}:{_shape_text(minimum)}",
        "trt_profile_opt_shapes": f"{key}:{_shape_text(opt)}",
        "trt_profile_max_shapes": f"{key}:{_shape_text(maximum)}",
    })
    return params


def warmup_entry(artifact: Artifact, max_batch: int) -> dict[str, Any]:
    """One zero-filled request at the profile's opt shape (dims without the batch dim when batching)."""
    opt = artifact.opt_shape
    batching = max_batch > 0
    batch = min(opt[0], max_batch) if batching else 1
    dims = list(opt[1:]) if batching else list(artifact.input.dims if all(d > 0 for d in artifact.input.dims) else opt)
    return {
        "name": f"opt_{_shape_text(opt)}",
        "batch_size": batch,
        "inputs": map_entries({artifact.input.name: {
            "data_type": Enum(artifact.input.triton_type), "dims": dims, "zero_data": True,
        }}),
    }


# --- the ensemble: image in, mask out ---------------------------------------------------------------------


def preprocessing_parameters(artifact: Artifact) -> dict[str, Any]:
    """What the preprocess model needs from the metadata (and an engine's H/W range), as JSON."""
    info = artifact.info
    contract = info.shape_contract
    if contract.spatial_dims == 3:
        raise ConfigError(
            f"{artifact.path.name} is a volume net (NCDHW): the --ensemble takes 2D images (uint8 H x W x C); "
            "serve the model itself (drop --ensemble) and send normalized NCDHW volumes"
        )
    if not contract.is_divisor_only:
        raise ConfigError(
            f"{artifact.path.name} is a valid-convolution net (output smaller than its input): padding cannot "
            "give a full-size mask and the ensemble has no tiling; serve it with `deploy-unet serve --input image` "
            "(which tiles), or export a padded net"
        )
    params: dict[str, Any] = {
        "input_name": artifact.input.name,
        "in_channels": int(info.in_channels),
        "mean": [float(v) for v in info.mean or []],
        "std": [float(v) for v in info.std or []],
        "divisor": int(info.divisor),
        "contract_reason": contract.reason,
        "pad_in_graph": bool(info.pad_in_graph),
    }
    if artifact.profile is not None:
        params["min_hw"] = list(artifact.profile.min[2:])
        params["max_hw"] = list(artifact.profile.max[2:])
    elif not artifact.hw_dynamic:
        params["min_hw"] = params["max_hw"] = list(artifact.input.dims[2:])
    return params


def ensemble_configs(artifact: Artifact, name: str, max_batch: int, options: RepositoryOptions) -> dict[str, dict]:
    """Configs of NAME_preprocess, NAME_postprocess and NAME_ensemble (all with the main model's max batch)."""
    if max_batch < 1:
        raise ConfigError(f"--ensemble needs a batching model; {artifact.path.name} has a fixed batch (max_batch_size 0)")
    if len(artifact.outputs) != 1:
        raise ConfigError(f"--ensemble needs one output (the logits); {artifact.path.name} has {len(artifact.outputs)}")
    info = artifact.info
    logits = artifact.outputs[0]
    mask_type = TRITON_TYPES[mask_numpy_dtype(info)]
    cpu = [{"count": options.instances, "kind": Enum("KIND_CPU")}]
    pre, post, ens = f"{name}_preprocess", f"{name}_postprocess", f"{name}_ensemble"
    image = {"name": IMAGE_INPUT, "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, -1]}
    image_size = {"name": IMAGE_SIZE, "data_type": Enum("TYPE_INT32"), "dims": [2]}
    model_input = {"name": artifact.input.name, "data_type": Enum(artifact.input.triton_type),
                   "dims": [info.in_channels, -1, -1]}
    logits_io = {"name": logits.name, "data_type": Enum(logits.triton_type), "dims": [info.num_classes, -1, -1]}
    mask = {"name": MASK_OUTPUT, "data_type": Enum(mask_type), "dims": [-1, -1]}
    preprocess = {
        "#what": Comment("uint8 H x W x C images (C: 1 grey, 3 RGB, 4 RGBA; any H, W) -> the model's normalized "
                         "NCHW, padded bottom/right to the divisor (reflect), and each image's H, W"),
        "name": pre, "backend": "python", "max_batch_size": max_batch,
        "input": [image], "output": [model_input, image_size], "instance_group": cpu,
        "parameters": map_entries({"preprocessing": {"string_value": json.dumps(preprocessing_parameters(artifact))}}),
    }
    postprocess = {
        "#what": Comment("logits -> argmax over classes -> mask cropped back to each image's H, W"),
        "name": post, "backend": "python", "max_batch_size": max_batch,
        "input": [logits_io, image_size], "output": [mask], "instance_group": cpu,
    }
    ensemble = {
        "#what": Comment(f"image in, mask out: {pre} -> {name} -> {post}"),
        "name": ens, "platform": "ensemble", "max_batch_size": max_batch,
        "input": [image], "output": [mask],
        "ensemble_scheduling": {"step": [
            {"model_name": pre, "model_version": -1,
             "input_map": map_entries({IMAGE_INPUT: IMAGE_INPUT}),
             "output_map": map_entries({artifact.input.name: "preprocessed", IMAGE_SIZE: IMAGE_SIZE})},
            {"model_name": name, "model_version": -1,
             "input_map": map_entries({artifact.input.name: "preprocessed"}),
             "output_map": map_entries({logits.name: "logits"})},
            {"model_name": post, "model_version": -1,
             "input_map": map_entries({logits.name: "logits", IMAGE_SIZE: IMAGE_SIZE}),
             "output_map": map_entries({MASK_OUTPUT: MASK_OUTPUT})},
        ]},
    }
    return {pre: preprocess, post: postprocess, ens: ensemble}


def python_model_source(which: str) -> str:
    """The ``model.py`` of the preprocess or postprocess python model."""
    return (Path(__file__).parent / "triton_models" / f"{which}.py").read_text()


def vendored_processing() -> dict[str, str]:
    """deploy_unet's errors, shapes and processing modules as a self-contained package (imports made
    relative), so the python models need nothing but NumPy in the Triton container."""
    root = Path(__file__).resolve().parent.parent
    files = {"__init__.py": f'"""A copy of deploy-unet {__version__} image processing (deploy_unet.processing and the two '
                            'modules it imports), written by `deploy-unet triton-repo --ensemble`."""\n'}
    for module in _VENDORED_MODULES:
        text = (root / f"{module}.py").read_text()
        text = re.sub(r"^from deploy_unet\.(\w+) import", r"from .\1 import", text, flags=re.M)
        leftover = re.findall(r"^\s*(?:from|import) deploy_unet\b.*$", text, flags=re.M)
        if leftover:  # a new import the copy cannot satisfy: fail here, not in the Triton container
            raise ArtifactError(f"deploy_unet/{module}.py imports {leftover[0].strip()!r}, which the vendored "
                                "processing package does not carry; add it to _VENDORED_MODULES")
        files[f"{module}.py"] = text
    return files


# --- writing ------------------------------------------------------------------------------------------------


def config_text(config: dict[str, Any], source: str) -> str:
    text = to_pbtxt(config) + "\n"
    check_model_config(text, source)  # raises on anything Triton's schema would refuse
    return text


def write_repository(
    artifacts: list[str | os.PathLike],
    output: str | os.PathLike,
    options: RepositoryOptions | None = None,
    names: list[str] | None = None,
    force: bool = False,
) -> Repository:
    """Write a model repository for ``artifacts`` into ``output`` (a new folder, or replaced with ``force``).

    Written into a temp folder beside ``output`` and renamed into place, so an interrupted run never
    leaves a half repository that Triton would load.
    """
    options = options or RepositoryOptions()
    options.check()
    if not artifacts:
        raise ConfigError("no artifacts given; pass one or more .onnx / .engine files")
    if names and len(names) != len(artifacts):
        raise ConfigError(f"{len(names)} --name values for {len(artifacts)} artifacts; give one name per artifact")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise ConfigError(f"{output} exists and is not empty; pass --force to replace it, or choose another -o")

    parsed = [read_artifact(a) for a in artifacts]
    chosen = [_check_name(n) for n in names] if names else [model_name_for(a.path) for a in parsed]
    planned: dict[str, tuple[dict, ModelFolder | None]] = {}
    files: dict[str, tuple[Artifact | None, dict[str, str]]] = {}
    folders: list[ModelFolder] = []
    for artifact, name in zip(parsed, chosen, strict=True):
        config, folder = main_model_config(artifact, name, options)
        entries = {name: config}
        if options.ensemble:
            entries.update(ensemble_configs(artifact, name, folder.max_batch_size, options))
        for model, cfg in entries.items():
            if model in planned:
                raise ConfigError(f"two models would be named {model!r}; pass --name for each artifact")
            planned[model] = (cfg, folder if model == name else None)
        folders.append(folder)
        files[name] = (artifact, {})
        if options.ensemble:
            for which in ("preprocess", "postprocess"):
                files[f"{name}_{which}"] = (None, {"model.py": python_model_source(which), **{
                    f"{VENDORED_PACKAGE}/{k}": v for k, v in vendored_processing().items()}})
                folders.append(ModelFolder(f"{name}_{which}", "python", folder.max_batch_size, source=f"{which} of {name}"))
            folders.append(ModelFolder(f"{name}_ensemble", "ensemble", folder.max_batch_size,
                                       source=f"{name}_preprocess -> {name} -> {name}_postprocess",
                                       hw_rule="any image size" + (f" whose padded size fits {artifact.hw_rule()}"
                                                                   if artifact.profile else "")))

    texts = {model: config_text(cfg, f"{model}/config.pbtxt") for model, (cfg, _) in planned.items()}
    schema_checked = check_model_config("name: \"probe\"") is not None

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for model, text in texts.items():
            (staging / model / "1").mkdir(parents=True)
            (staging / model / "config.pbtxt").write_text(text)
            artifact, extra = files.get(model, (None, {}))
            if artifact is not None:
                target = "model.plan" if artifact.kind == "engine" else "model.onnx"
                shutil.copyfile(artifact.path, staging / model / "1" / target)
            for relative, content in extra.items():
                dest = staging / model / "1" / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(content)
        (staging / "README.md").write_text(repository_readme(folders, parsed, chosen, options))
        _replace_dir(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Repository(output, folders, schema_checked)


def _replace_dir(staging: Path, output: Path) -> None:
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


def repository_readme(folders: list[ModelFolder], artifacts: list[Artifact], names: list[str],
                      options: RepositoryOptions) -> str:
    lines = [
        "# Triton model repository (written by deploy-unet triton-repo)",
        "",
        f"deploy-unet {__version__}. Run it with NVIDIA's Triton container (onnxruntime and tensorrt backends "
        "included; the engines only on the GPU and TensorRT version they were built for):",
        "",
        "```bash",
        "docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
        "    -v $PWD:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        "```",
        "",
        "| model | platform | max_batch_size | from | input H/W |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in folders:
        lines.append(f"| `{f.name}` | {f.platform} | {f.max_batch_size} | {f.source} | {f.hw_rule or '-'} |")
    lines.append("")
    for artifact, name in zip(artifacts, names, strict=True):
        sha = sha256_file(artifact.path)
        lines.append(f"- `{name}`: {artifact.path.name} (sha256 {sha[:16]}...), {artifact.precision}, "
                     f"input `{artifact.input.name}` {artifact.input.dtype} NCHW, "
                     f"output `{artifact.outputs[0].name}` {artifact.outputs[0].dtype} "
                     f"({artifact.info.num_classes} classes); {artifact.hw_rule()}.")
        for note in artifact.notes:
            lines.append(f"  - note: {note}")
    lines += [
        "",
        "Requests of different H/W never share a batch (Triton batches only equal shapes for `-1` dims). "
        "Logits are large (UNet, 4 classes, batch 8 at 512x512: 33 MB): a gRPC client left at gRPC's 4 MB default "
        "receive limit fails on them (tritonclient raises its limit to 2 GB); prefer the ensemble's mask.",
    ]
    if options.ensemble:
        lines += [
            "",
            "## The ensemble: image in, mask out",
            "",
            "`NAME_ensemble` takes `image` (UINT8, N x H x W x C: 1 grey, 3 RGB or 4 RGBA channels, any H and W, "
            "all N images of one size) and returns `mask` (N x H x W class ids). `NAME_preprocess` normalizes with "
            "the model's mean/std and pads bottom/right to the divisor (reflect), as `deploy-unet predict` does; "
            "`NAME_postprocess` takes the argmax and crops back. Their `model.py` needs only NumPy (the python "
            f"backend's own); the processing code is copied beside it as `{VENDORED_PACKAGE}/`.",
            "",
            "```python",
            "import numpy as np, tritonclient.http as http",
            "client = http.InferenceServerClient('localhost:8000')",
            "image = np.asarray(PIL.Image.open('scene.png').convert('RGB'))[None]      # 1 x H x W x 3 uint8",
            "inp = http.InferInput('image', list(image.shape), 'UINT8'); inp.set_data_from_numpy(image)",
            f"mask = client.infer('{names[0]}_ensemble', [inp]).as_numpy('mask')[0]   # H x W",
            "```",
        ]
    return "\n".join(lines) + "\n"
