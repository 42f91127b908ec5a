//! A validated mapping of the shm file: the header, the slots, the worker records and the
//! connection matrix, with every index checked. Shared by the writer, the workers and the readers.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU32;

use crate::layout::{self, Geometry, Header, RelayRecord, Slot, WorkerRecord, HEADER_SIZE};
use crate::sys::Mapping;
use crate::{ShmError, WorkerKind};

pub(crate) struct Region {
    map: Mapping,
    geo: Geometry,
}

/// How to map an existing file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadWrite,
    ReadOnly,
}

impl Region {
    /// Wraps a mapping whose length is at least `geo.total_len()` (false: `None`).
    pub fn new(map: Mapping, geo: Geometry) -> Option<Region> {
        let region = Region { map, geo };
        let fits = region.map.len() >= geo.total_len()
            && region.map.get::<Header>(0).is_some()
            && region
                .map
                .slice::<Slot>(geo.slots_offset(), geo.max_sockets as usize)
                .is_some()
            && region
                .map
                .slice::<WorkerRecord>(geo.workers_offset(), geo.worker_count())
                .is_some()
            && region
                .map
                .slice::<AtomicU32>(geo.conns_offset(), geo.conn_cells())
                .is_some()
            && region
                .map
                .slice::<RelayRecord>(geo.relays_offset(), geo.max_relays as usize)
                .is_some();
        fits.then_some(region)
    }

    /// Maps an existing table and checks its header against this build and the file's length.
    /// `name` is what errors call the file.
    pub fn attach(file: &File, name: &Path, access: Access) -> Result<Region, ShmError> {
        let meta = file.metadata().map_err(|e| ShmError::io(name, "stat", e))?;
        if !meta.is_file() {
            return Err(ShmError::bad(name, "not a regular file"));
        }
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if len < HEADER_SIZE {
            return Err(ShmError::bad(
                name,
                format!("file is {len} bytes, shorter than the {HEADER_SIZE}-byte header"),
            ));
        }
        // Map the header alone first: a foreign file may be huge, and its length is only
        // trusted once the header's counts account for it.
        let head = map(file, HEADER_SIZE, access).map_err(|e| ShmError::io(name, "mmap", e))?;
        let geo = {
            let header = head
                .get::<Header>(0)
                .ok_or_else(|| ShmError::bad(name, "header not mappable"))?;
            layout::validate(header, len).map_err(|what| ShmError::bad(name, what))?
        };
        drop(head);
        let full = map(file, geo.total_len(), access).map_err(|e| ShmError::io(name, "mmap", e))?;
        let region = Region::new(full, geo)
            .ok_or_else(|| ShmError::bad(name, "mapping shorter than the header says"))?;
        // The file may have been replaced between the two maps only if someone rewrote it in
        // place, which the supervisor never does; still, recheck what we index with.
        layout::validate(region.header(), len).map_err(|what| ShmError::bad(name, what))?;
        if region.geometry() != geo {
            return Err(ShmError::bad(name, "header changed while attaching"));
        }
        Ok(region)
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub fn header(&self) -> &Header {
        // `new` checked that the header lies inside the mapping, so this is never `None`; an
        // internal invariant, not something a file can break.
        self.map
            .get::<Header>(0)
            .expect("Region::new checked the header bounds")
    }

    pub fn slots(&self) -> &[Slot] {
        self.map
            .slice::<Slot>(self.geo.slots_offset(), self.geo.max_sockets as usize)
            .unwrap_or(&[])
    }

    pub fn slot(&self, index: u32) -> Option<&Slot> {
        self.slots().get(index as usize)
    }

    pub fn workers(&self) -> &[WorkerRecord] {
        self.map
            .slice::<WorkerRecord>(self.geo.workers_offset(), self.geo.worker_count())
            .unwrap_or(&[])
    }

    pub fn worker(&self, kind: WorkerKind, rank: u32) -> Option<&WorkerRecord> {
        self.workers().get(self.geo.worker_index(kind, rank)?)
    }

    /// The relay records.
    pub fn relays(&self) -> &[RelayRecord] {
        self.map
            .slice::<RelayRecord>(self.geo.relays_offset(), self.geo.max_relays as usize)
            .unwrap_or(&[])
    }

    /// One relay record, `None` beyond `max_relays`.
    pub fn relay(&self, index: u32) -> Option<&RelayRecord> {
        self.relays().get(index as usize)
    }

    /// Stream worker `rank`'s row of the connection matrix, one cell per slot (the padding left
    /// out); `None` beyond the stream pool.
    pub fn conn_row(&self, rank: u32) -> Option<&[AtomicU32]> {
        if rank >= self.geo.stream_workers {
            return None;
        }
        let cells = self.geo.conn_row_cells();
        let offset = self.geo.conns_offset() + layout::CONN_CELL_SIZE * cells * rank as usize;
        self.map
            .slice::<AtomicU32>(offset, self.geo.max_sockets as usize)
    }

    /// The cell of stream worker `rank` for slot `index`.
    pub fn conn_cell(&self, rank: u32, index: u32) -> Option<&AtomicU32> {
        self.conn_row(rank)?.get(index as usize)
    }

    /// A slot's open connections: the sum of its column (0 beyond `max_sockets`).
    pub fn slot_connections(&self, index: u32) -> u64 {
        if index >= self.geo.max_sockets {
            return 0;
        }
        layout::sum_conn_cells(
            (0..self.geo.stream_workers).filter_map(|rank| self.conn_cell(rank, index)),
        )
    }

    /// Whether stores are allowed (false for readers' read-only mappings).
    pub fn writable(&self) -> bool {
        self.map.writable()
    }
}

fn map(file: &File, len: usize, access: Access) -> std::io::Result<Mapping> {
    match access {
        Access::ReadWrite => Mapping::map_rw(file, len),
        Access::ReadOnly => Mapping::map_read_only(file, len),
    }
}
