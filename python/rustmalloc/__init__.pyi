from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = [
    "DOMAINS",
    "DomainStats",
    "OsStats",
    "SizeClassStats",
    "Snapshot",
    "allocated_blocks",
    "configure",
    "format_stats",
    "install",
    "installed",
    "print_stats",
    "reset_peak",
    "stats",
    "track",
    "trim",
]

DOMAINS: tuple[str, str, str]

@dataclass(frozen=True)
class DomainStats:
    blocks_in_use: int
    bytes_in_use: int
    peak_bytes_in_use: int
    allocs: int
    callocs: int
    reallocs: int
    frees: int
    foreign_frees: int
    foreign_reallocs: int
    large_allocs: int
    large_blocks_in_use: int
    large_bytes_in_use: int
    bytes_allocated: int
    bytes_freed: int

@dataclass(frozen=True)
class SizeClassStats:
    domain: str
    heap: str
    index: int
    block_size: int
    blocks_in_use: int
    blocks_free: int
    pages: int

@dataclass(frozen=True)
class OsStats:
    bytes_mapped: int
    bytes_returned: int
    bytes_resident: int
    segments: int
    segments_peak: int
    bytes_refaulted: int
    purge_delay_ms: int

@dataclass(frozen=True)
class Snapshot:
    installed: tuple[str, ...]
    domains: Mapping[str, DomainStats]
    size_classes: tuple[SizeClassStats, ...]
    os: OsStats
    raw_heaps_created: int
    raw_heaps_abandoned: int
    @property
    def fragmentation(self) -> float: ...
    @property
    def blocks_in_use(self) -> int: ...
    @property
    def bytes_in_use(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

class track:
    last: Optional[track]
    def __init__(self) -> None: ...
    def __enter__(self) -> track: ...
    def __exit__(self, *exc: object) -> None: ...
    def __call__(self, func: _F) -> _F: ...
    @property
    def allocated_bytes(self) -> int: ...
    @property
    def freed_bytes(self) -> int: ...
    @property
    def net_bytes(self) -> int: ...
    @property
    def peak_bytes(self) -> int: ...
    @property
    def allocs(self) -> int: ...
    @property
    def frees(self) -> int: ...

def install(domains: Union[str, Iterable[str]] = ..., *, check: Union[bool, str, None] = ...) -> None: ...
def installed() -> tuple[str, ...]: ...
def stats() -> Snapshot: ...
def allocated_blocks() -> int: ...
def reset_peak() -> None: ...
def format_stats(snapshot: Optional[Snapshot] = ..., width: int = ...) -> str: ...
def print_stats(snapshot: Optional[Snapshot] = ..., file: Any = ...) -> None: ...
def trim() -> int: ...
def configure(
    *,
    purge: Optional[bool] = ...,
    purge_delay_ms: Optional[int] = ...,
    retain_bytes: Union[int, str, None] = ...,
    idle_purge: Optional[bool] = ...,
) -> dict[str, Any]: ...
def parse_size(value: Union[int, str], what: str = ...) -> int: ...
