from typing import Iterable, Mapping, Union

DOMAINS: tuple[str, str, str]

class DomainStats:
    blocks_in_use: int
    bytes_in_use: int
    large_blocks_in_use: int
    large_bytes_in_use: int
    foreign_frees: int
    foreign_reallocs: int

class Snapshot:
    installed: tuple[str, ...]
    domains: Mapping[str, DomainStats]
    raw_heaps_created: int
    raw_heaps_abandoned: int
    def to_dict(self) -> dict[str, object]: ...

def install(domains: Union[str, Iterable[str]] = ...) -> None: ...
def installed() -> tuple[str, ...]: ...
def stats() -> Snapshot: ...
