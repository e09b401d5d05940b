//! Estimated size of values lifted out of a plugin, checked against `max_response_bytes`:
//! string and list lengths plus the fixed size of scalars.

use std::mem::size_of;

use super::storage_types::{Error as StorageError, ObjectInfo, ObjectPage, StoreInfo};

use super::driver_types::{
    CachedTemplate, Capabilities, ConsoleEndpoint, DiskFormat, DriverError, ExecResult, ExportedDisk, HostReport,
    Instance, Snapshot, TemplateRef,
};

pub(crate) trait EstimatedSize {
    fn estimated_size_bytes(&self) -> usize;
}

macro_rules! fixed_size {
    ($($type:ty),*) => {$(
        impl EstimatedSize for $type {
            fn estimated_size_bytes(&self) -> usize {
                size_of::<$type>()
            }
        }
    )*};
}

fixed_size!((), bool, u16, u32, u64, i32, i64, Capabilities, DiskFormat);

impl EstimatedSize for String {
    fn estimated_size_bytes(&self) -> usize {
        self.len()
    }
}

impl<T: EstimatedSize> EstimatedSize for Option<T> {
    fn estimated_size_bytes(&self) -> usize {
        1 + self.as_ref().map_or(0, EstimatedSize::estimated_size_bytes)
    }
}

impl<T: EstimatedSize> EstimatedSize for Vec<T> {
    fn estimated_size_bytes(&self) -> usize {
        self.iter().fold(size_of::<u32>(), |total, item| total.saturating_add(item.estimated_size_bytes()))
    }
}

impl<T: EstimatedSize, E: EstimatedSize> EstimatedSize for Result<T, E> {
    fn estimated_size_bytes(&self) -> usize {
        1 + match self {
            Ok(value) => value.estimated_size_bytes(),
            Err(error) => error.estimated_size_bytes(),
        }
    }
}

/// Sums the estimated sizes of the listed fields.
macro_rules! record_size {
    ($($type:ty { $($field:ident),* }),* $(,)?) => {$(
        impl EstimatedSize for $type {
            fn estimated_size_bytes(&self) -> usize {
                0_usize $(.saturating_add(self.$field.estimated_size_bytes()))*
            }
        }
    )*};
}

record_size!(
    HostReport { id, cpu, ram_mb, disk_gb, hypervisor, cached_templates },
    CachedTemplate { name, version, tag, size_bytes },
    TemplateRef { name, version, tag, size_bytes },
    Instance { id, host, ip, mac },
    ExecResult { stdout, stderr, exit_code, timed_out },
    ConsoleEndpoint { host, port, password },
    Snapshot { name, description, created_at },
    ExportedDisk { format, size_bytes },
);

record_size!(ObjectInfo { key, size, modified_ms }, ObjectPage { objects, next_cursor }, StoreInfo { location });

impl EstimatedSize for StorageError {
    fn estimated_size_bytes(&self) -> usize {
        match self {
            StorageError::NotFound(message)
            | StorageError::Invalid(message)
            | StorageError::InvalidConfig(message)
            | StorageError::Denied(message)
            | StorageError::Unavailable(message)
            | StorageError::Internal(message) => message.len(),
        }
    }
}

impl EstimatedSize for DriverError {
    fn estimated_size_bytes(&self) -> usize {
        match self {
            DriverError::NotFound(message)
            | DriverError::Conflict(message)
            | DriverError::Invalid(message)
            | DriverError::Unsupported(message)
            | DriverError::Unavailable(message) => message.len(),
            DriverError::Backend(backend_error) => size_of::<i64>() + backend_error.message.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::driver_types::InstanceState;

    fn instance(id: &str) -> Instance {
        Instance { id: id.to_string(), host: "h".to_string(), state: InstanceState::Running, ip: None, mac: None }
    }

    #[test]
    fn sizes_grow_with_strings_and_lists() {
        let small: Result<Vec<Instance>, DriverError> = Ok(vec![instance("a")]);
        let large: Result<Vec<Instance>, DriverError> = Ok((0..1000).map(|_| instance(&"x".repeat(100))).collect());
        assert!(small.estimated_size_bytes() < 32);
        assert!(large.estimated_size_bytes() > 100_000);
        let error: Result<(), DriverError> = Err(DriverError::NotFound("y".repeat(5000)));
        assert!(error.estimated_size_bytes() >= 5000);
    }
}
