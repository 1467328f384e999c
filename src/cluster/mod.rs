//! The cluster file: see README.md, "cluster.yaml reference".
