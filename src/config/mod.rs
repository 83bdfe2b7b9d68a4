//! Configuration: agent and coordinator TOML files and the model spec,
//! parsed in stages (raw → merged with flags → validated settings).
