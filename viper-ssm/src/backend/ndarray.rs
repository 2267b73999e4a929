//! `SsmBackend` on NdArray: the default bodies (the tensor-op reference) throughout.

use burn::backend::ndarray::{FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray};
use burn::backend::NdArray;

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> super::SsmBackend for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
}
