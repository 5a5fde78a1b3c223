//! Device-mapper metadata readers (dm-snapshot exception store, thin/era XML). Not written yet.
