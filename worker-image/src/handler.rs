//! Type erasure of step handlers: typed `Fn(StepContext, I) -> Future<Result<O, StepError>>` closures become
//! one JSON-in, JSON-out shape the worker loop can store by name.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_wire::error_types;

use crate::context::StepContext;
use crate::error::StepError;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler with its input and output types erased to JSON.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    /// Decodes the input, runs the handler, encodes the output.
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<Result<Value, StepError>>;
}

/// A typed handler closure and the types it decodes and encodes.
pub(crate) struct TypedHandler<F, I, O> {
    function: F,
    types: PhantomData<fn(I) -> O>,
}

impl<F, I, O> TypedHandler<F, I, O> {
    pub(crate) fn new(function: F) -> Self {
        Self {
            function,
            types: PhantomData,
        }
    }
}

impl<F, Fut, I, O> ErasedHandler for TypedHandler<F, I, O>
where
    F: Fn(StepContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    fn call(&self, ctx: StepContext, input: Value) -> BoxFuture<Result<Value, StepError>> {
        let input: I = match serde_json::from_value(input) {
            Ok(input) => input,
            Err(error) => {
                let error = StepError::fatal(
                    error_types::INVALID_INPUT,
                    format!(
                        "the input does not match the handler's input type {}: {error}",
                        std::any::type_name::<I>()
                    ),
                );
                return Box::pin(std::future::ready(Err(error)));
            }
        };
        let future = (self.function)(ctx, input);
        Box::pin(async move {
            let output = future.await?;
            serde_json::to_value(output).map_err(|error| {
                StepError::fatal(
                    error_types::INVALID_OUTPUT,
                    format!("the output cannot be encoded as JSON: {error}"),
                )
            })
        })
    }
}
