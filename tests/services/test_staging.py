"""Host/device staging (services/staging.py): on the CPU it is the identity plus the cast,
and the buffer pool never hands out memory a ZeroMQ frame may still be reading."""

import torch

from boardlens.protocol import encode
from boardlens.services.staging import BufferPool, ToDevice, ToHost


def test_a_pool_buffer_is_reused_only_once_nothing_views_it():
    pool = BufferPool(pin=False)
    shape = torch.Size([4, 3])
    a = pool.take(shape, torch.float32)
    b = pool.take(shape, torch.float32)
    assert a.data_ptr() != b.data_ptr() and pool.allocated == 2  # a is still held
    ptr = a.data_ptr()
    frames = encode("batch", epoch="ab", seq=0, game="g", model="m", layer=0, tensors={"acts": a}, meta={})
    del a, b
    c = pool.take(shape, torch.float32)  # the frame views a's memory: only b's buffer is free
    assert c.data_ptr() != ptr and pool.allocated == 2
    d = pool.take(shape, torch.float32)
    assert pool.allocated == 3 and d.data_ptr() != ptr
    del frames, c, d
    assert pool.take(shape, torch.float32).data_ptr() in {ptr} | {buf.data_ptr() for buf, _ in pool.buffers}
    assert pool.allocated == 3  # nothing new once the frames are gone
    assert pool.take(torch.Size([2, 2]), torch.bfloat16).shape == (2, 2)  # another shape: its own buffer


def test_cpu_staging_is_the_identity_and_the_cast():
    x = torch.randn(5, 7)
    assert ToHost(torch.device("cpu"), torch.float32).start(x)() is x  # no copy at all
    bf = ToHost(torch.device("cpu"), torch.bfloat16).start(x)()
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, x.to(torch.bfloat16))
    wide = ToDevice(torch.device("cpu"))(bf)
    assert wide.dtype == torch.float32 and torch.equal(wide, bf.float())  # trainers accumulate in fp32
