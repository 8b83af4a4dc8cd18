//! Native benchmark loops (`rustmalloc._rustmalloc._bench`, not public API): they call CPython's
//! public allocator functions, so the same loop measures whichever allocator is installed.

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = m;
    Ok(())
}
