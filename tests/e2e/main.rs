//! End-to-end tests: the operator binary against a real kube-apiserver,
//! kube-controller-manager and STS (moto), driven with kubectl and kube-rs as
//! a user would. `make test` starts the control plane and runs them; each
//! test runs its own operator in a namespace of its own.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly

mod attribution;
mod basic;
mod budget;
mod catalogue;
mod ecr;
mod failures;
mod handover;
mod image;
mod lifecycle;
mod memory;
mod refresh;
mod repair;
mod sdk;
mod sources;
mod support;
mod tenancy;
