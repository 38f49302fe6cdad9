"""The ``ray`` engine of ``batch``: the same rows as ``batch.LocalEngine``, computed by Ray Data.

``read_binary_files`` reads the files (local folders and object stores alike, through
``pyarrow`` file systems) in light tasks; ``map_batches`` hands batches of modest size to a pool
of actors (``_Scorer``), each loading the model once and running the one pipeline
(``batch.decode_item``, ``batch.score_decoded``: ``DecodedImage.decode`` and ``Predictor.calls``
with the gate and the operating point) on ONNX Runtime (no TensorFlow: an actor starts in about
a second), its threads set to the CPUs Ray gave it; ``RaySettings.runtime`` "keras" scores with
TensorFlow instead (the lab's comparison, ``bench --only batch``).
Every row's failure is caught inside the call and becomes that file's row (Ray's own error
handling would drop a whole block, or stop the job); a file Ray never read comes back as no row,
which ``batch.run_batch`` turns into an error row. The driver only streams rows into RESULTS.

Nothing here logs a file path: Ray's own progress bars and worker output are off, its logs go
under the temporary folder the operator chose (``RaySettings.temp_dir``), and the only messages
are counts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .batch import BatchError, SourceItem, decode_item, error_row, result_schema, score_decoded, subtype_model_sha
from .preprocessing import ImageLimits

# Ray's own share of a CPU for a reading task: reading bytes is I/O, so most of the machine is
# left to the actors that decode and score.
READ_TASK_CPUS = 0.25


@dataclass(frozen=True)
class RaySettings:
    """How the ``ray`` engine runs.

    Attributes:
        address: a running cluster (``host:port``, ``ray://host:port`` or ``auto``); None starts
            one on this machine for the run and stops it after.
        temp_dir: Ray's temporary and log folder when it starts one here (None: Ray's default).
        actors: scoring actors (None: as many whole CPUs as the cluster has, less the reading share).
        batch_size: files per call of an actor (a forward pass of the predictor's batch size).
        limits: what an input may be (``ImageLimits``).
        connect_timeout_s: how long a given address may take to answer before the run is refused.
        runtime: what the actors score with (``prediction.RUNTIMES``): "onnx", or "keras" (TensorFlow).
    """

    address: str | None = None
    temp_dir: Path | None = None
    actors: int | None = None
    batch_size: int = 32
    limits: ImageLimits = ImageLimits()
    connect_timeout_s: float = 5.0
    runtime: str = "onnx"


class _Scorer:
    """A Ray actor's scorer: the model loaded once, its runtime and the decoding threads on the
    actor's own CPUs (decoding releases the GIL, as in ``batch.LocalEngine``).

    ``subtype`` is the driver's decision (True: load the subtype pattern's network, False: none),
    never the actor's own ``PNEUMO_SUBTYPE``: a worker on another node has another environment.
    ``subtype_sha`` is the network the driver loaded; an actor that finds another refuses to start.
    """

    def __init__(
        self, model_path: str, site: str | None, threads: int, limits: ImageLimits, runtime: str = "onnx",
        subtype: bool | None = None, subtype_sha: str | None = None,
    ):
        from concurrent.futures import ThreadPoolExecutor

        if runtime == "keras":
            import tensorflow as tf

            # Before any TensorFlow work: afterwards the thread pools are fixed.
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        from .prediction import Predictor

        self.predictor = Predictor.from_file(
            Path(model_path), site=None if site is None else Path(site), runtime=runtime, threads=threads, subtype=subtype
        )
        if subtype is not None and subtype_model_sha(self.predictor) != subtype_sha:
            raise BatchError(
                "A Ray worker found another subtype pattern network beside the model than the driver did; give every "
                "node the same model folder."
            )
        self.limits = limits
        self.decoders = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def __call__(self, batch):
        import pyarrow as pa

        paths = batch["path"].to_pylist()
        contents = batch["bytes"].to_pylist()
        # The decoder refuses an empty or too large file with the words it uses everywhere.
        decoded = list(self.decoders.map(lambda data: decode_item(lambda: data, self.limits), contents))
        try:
            rows = score_decoded(self.predictor, paths, decoded)
        except Exception as error:  # noqa: BLE001 - one row each, not a dropped block
            point = self.predictor.operating_point.id
            reason = f"The model could not score this batch ({type(error).__name__}); run the batch again to retry."
            rows = [error_row(path, digest, reason, self.predictor.metadata.model_sha256, point)
                    for path, (_, _, digest) in zip(paths, decoded)]
        return pa.Table.from_pylist(rows, schema=result_schema())


def _answers(address: str, timeout_s: float) -> bool:
    """Whether something listens at a ``host:port`` (or ``ray://host:port``) address."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


class RayEngine:
    """Scores items on a Ray cluster (see the module's docstring).

    Args:
        model_path: the model; every actor loads it (it must be at this path on every node).
        site: a site profile for the operating point, or None for the shipped one.
        settings: ``RaySettings``.
        subtype: load the subtype pattern's network (``Predictor.from_file``'s argument; None follows
            ``PNEUMO_SUBTYPE`` here, in the driver). The actors load what the driver loaded.

    Raises:
        BatchError: the address does not answer, or Ray cannot start here.
        ModelFileError, SiteProfileError: the model or profile cannot be used (checked here first).
    """

    name = "ray"

    def __init__(
        self, model_path: Path, site: Path | None = None, settings: RaySettings = RaySettings(), subtype: bool | None = None
    ):
        from .prediction import Predictor

        # Loaded here too: a bad model or profile is refused before any cluster work, and the
        # run's identity (model, operating point, subtype network) is known to the results folder.
        predictor = Predictor.from_file(Path(model_path), site=site, runtime=settings.runtime, subtype=subtype)
        self.model_sha = predictor.metadata.model_sha256
        self.operating_point = predictor.operating_point.id
        self.threshold = predictor.operating_point.threshold
        self.subtype_sha = subtype_model_sha(predictor)
        self.batch_size = settings.batch_size or predictor.batch_size
        del predictor
        self.model_path = str(Path(model_path).resolve())
        self.site = None if site is None else str(Path(site).resolve())
        self.settings = settings
        self._started = False
        self._connect()

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return  # a cluster this process already joined (the tests start one): used, not stopped
        address = self.settings.address
        if address not in (None, "auto") and not _answers(address, self.settings.connect_timeout_s):
            raise BatchError(
                f"The Ray cluster at {address} does not answer. Check the address (host:port of its head) "
                "and that the cluster is running, or leave --ray-address out to run on this machine."
            )
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None and self.settings.temp_dir is not None:
            Path(self.settings.temp_dir).mkdir(parents=True, exist_ok=True)
            options["_temp_dir"] = str(Path(self.settings.temp_dir).resolve())
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise BatchError(f"Ray could not start or connect ({type(error).__name__}: {error}).") from None
        self._started = True

    def _actors(self) -> tuple[int, float, int]:
        """(actors, CPUs each, runtime threads each) for the cluster's CPUs."""
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        usable = max(1.0, cpus - READ_TASK_CPUS)
        actors = self.settings.actors or max(1, int(usable))
        each = usable / actors
        return actors, each, max(1, int(round(each)))

    def rows(self, items: Sequence[SourceItem]) -> Iterator[dict]:
        """One row per item Ray could read, in the order they finish."""
        import ray

        paths = [item.path for item in items if item.path is not None]
        if not paths:
            return
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver draws one bar; Ray's would print paths' counts per operator
        context.print_on_execution_start = False
        actors, cpus_each, threads = self._actors()
        dataset = ray.data.read_binary_files(paths, include_paths=True, ignore_missing_paths=True, num_cpus=READ_TASK_CPUS)
        scored = dataset.map_batches(
            _Scorer,
            fn_constructor_kwargs={"model_path": self.model_path, "site": self.site, "threads": threads,
                                   "limits": self.settings.limits, "runtime": self.settings.runtime,
                                   "subtype": self.subtype_sha is not None, "subtype_sha": self.subtype_sha},
            batch_size=self.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_each,
        )
        names = {_key(item.path): item.name for item in items if item.path is not None}
        for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in table.to_pylist():
                name = names.get(_key(row["file"]))
                if name is not None:
                    row["file"] = name
                    yield row

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False


def _key(path: str) -> str:
    """A path as Ray's local file system returns it and as the source named it, made comparable."""
    return os.path.normpath(path.split("://", 1)[-1]).lstrip("/")
