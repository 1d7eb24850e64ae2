"""The few CUDA driver calls the GPU path needs, loaded from libcuda.so.1 at run time.

Why the driver library through ctypes: it ships with the NVIDIA driver (every
machine that can run CUDA has it, whatever toolkit or framework is installed), its
ABI is stable across CUDA versions, and loading it at run time keeps the package
free of any CUDA build or install dependency. A dozen prototypes are all we use;
each call releases the GIL (ctypes does), and each moves megabytes, so the ~1 us a
ctypes call costs is noise. torch and CuPy use the device's primary context, which
is the one we make current here, so their allocations are ours to copy into.

CUDA does not survive fork: a child of a process that used CUDA gets a clear
error here instead of the driver's undefined behaviour.
"""
import ctypes
import os
import threading

__all__ = ["CudaError", "CudaUnavailableError", "Device", "device", "device_ordinal_of"]

_HOST_REGISTER_PORTABLE = 0x01      # pinned for every context, not only the current one
_STREAM_NON_BLOCKING = 0x01         # never waits for the legacy default stream
_EVENT_DISABLE_TIMING = 0x02        # cheaper record and synchronize
_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9

_u64 = ctypes.c_uint64
_vp = ctypes.c_void_p
_PROTOTYPES = {
    "cuInit": (ctypes.c_uint,),
    "cuDeviceGetCount": (ctypes.POINTER(ctypes.c_int),),
    "cuDeviceGet": (ctypes.POINTER(ctypes.c_int), ctypes.c_int),
    "cuDevicePrimaryCtxRetain": (ctypes.POINTER(_vp), ctypes.c_int),
    "cuCtxGetCurrent": (ctypes.POINTER(_vp),),
    "cuCtxSetCurrent": (_vp,),
    "cuCtxSynchronize": (),
    "cuMemHostRegister_v2": (_vp, ctypes.c_size_t, ctypes.c_uint),
    "cuMemHostUnregister": (_vp,),
    "cuMemcpyHtoDAsync_v2": (_u64, _vp, ctypes.c_size_t, _vp),
    "cuMemGetAddressRange_v2": (ctypes.POINTER(_u64), ctypes.POINTER(ctypes.c_size_t), _u64),
    "cuPointerGetAttribute": (_vp, ctypes.c_int, _u64),
    "cuStreamCreate": (ctypes.POINTER(_vp), ctypes.c_uint),
    "cuStreamSynchronize": (_vp,),
    "cuStreamDestroy_v2": (_vp,),
    "cuEventCreate": (ctypes.POINTER(_vp), ctypes.c_uint),
    "cuEventRecord": (_vp, _vp),
    "cuEventSynchronize": (_vp,),
    "cuEventDestroy_v2": (_vp,),
    "cuGetErrorName": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
}


class CudaUnavailableError(RuntimeError):
    """No CUDA here: the driver library is missing, it has no device, or this process
    is a fork of one that used CUDA. The message says which."""


class CudaError(RuntimeError):
    """A CUDA driver call failed; `call` and `code` say which and how."""

    def __init__(self, call, code, name):
        super().__init__(f"{call} failed: {name} ({code})")
        self.call = call
        self.code = code


class _Driver:
    """libcuda.so.1 with our prototypes, initialized once in this process."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaUnavailableError(
                f"CUDA is unavailable: libcuda.so.1 (the NVIDIA driver's library) could "
                f"not be loaded: {exc}") from None
        for name, argtypes in _PROTOTYPES.items():
            fn = getattr(self.lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        code = self.lib.cuInit(0)
        if code:
            raise CudaUnavailableError(f"CUDA is unavailable: cuInit failed: "
                                       f"{self.error_name(code)} ({code})")

    def error_name(self, code):
        name = ctypes.c_char_p()
        if self.lib.cuGetErrorName(code, ctypes.byref(name)) or not name.value:
            return "unknown CUDA error"
        return name.value.decode()

    def __call__(self, name, *args):
        code = getattr(self.lib, name)(*args)
        if code:
            raise CudaError(name, code, self.error_name(code))


_driver = None
_devices = {}
_lock = threading.Lock()
_began_in = None        # the pid of the process that began initializing the driver


def _new_lock_in_child():
    """A parent thread may hold _lock at fork (cuInit takes a while): the child's is
    its own, and free."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _driver_here():
    global _driver, _began_in
    with _lock:
        if _began_in not in (None, os.getpid()):
            raise CudaUnavailableError(
                "CUDA is unavailable in a forked child of a process that used it (CUDA "
                "does not survive fork): start workers with the 'spawn' method")
        if _driver is None:
            # Marked before cuInit: a child forked while it runs has the mark and no
            # driver, and must not begin again on the parent's half-made state.
            _began_in = os.getpid()
            try:
                _driver = _Driver()
            except CudaUnavailableError:
                _began_in = None            # no driver: a child may try its own
                raise
    return _driver


def device(ordinal):
    """The Device of CUDA device `ordinal`, its primary context retained once."""
    cu = _driver_here()
    with _lock:
        dev = _devices.get(ordinal)
        if dev is None:
            count = ctypes.c_int()
            cu("cuDeviceGetCount", ctypes.byref(count))
            if not 0 <= ordinal < count.value:
                raise CudaUnavailableError(
                    f"CUDA device {ordinal} does not exist: the driver sees "
                    f"{count.value} device{'s' if count.value != 1 else ''}")
            dev = _devices[ordinal] = Device(cu, ordinal)
    return dev


def device_ordinal_of(pointer):
    """The ordinal of the device whose memory holds `pointer` (a device address)."""
    cu = _driver_here()
    ordinal = ctypes.c_int()
    cu("cuPointerGetAttribute", ctypes.byref(ordinal), _POINTER_ATTRIBUTE_DEVICE_ORDINAL,
       pointer)
    return ordinal.value


class Device:
    """One CUDA device's primary context (the one torch and CuPy use)."""

    def __init__(self, cu, ordinal):
        self._cu = cu
        self.ordinal = ordinal
        handle = ctypes.c_int()
        cu("cuDeviceGet", ctypes.byref(handle), ordinal)
        self._context = _vp()
        cu("cuDevicePrimaryCtxRetain", ctypes.byref(self._context), handle)

    def make_current(self):
        """Make our context this thread's; returns the one it replaced."""
        old = _vp()
        self._cu("cuCtxGetCurrent", ctypes.byref(old))
        self._cu("cuCtxSetCurrent", self._context)
        return old

    def restore(self, old):
        self._cu("cuCtxSetCurrent", old)

    def synchronize(self):
        """Wait for all work queued in the context (on any stream)."""
        self._cu("cuCtxSynchronize")

    def allocation_of(self, pointer):
        """(base, size) of the device allocation holding `pointer`."""
        base, size = _u64(), ctypes.c_size_t()
        self._cu("cuMemGetAddressRange_v2", ctypes.byref(base), ctypes.byref(size), pointer)
        return base.value, size.value

    def pin(self, address, nbytes):
        """Page-lock host memory and map it for this context's DMA engines."""
        self._cu("cuMemHostRegister_v2", address, nbytes, _HOST_REGISTER_PORTABLE)

    def unpin(self, address):
        self._cu("cuMemHostUnregister", address)

    def copy_lane(self, slots):
        """A stream, with an event per staging slot, for one pipeline lane."""
        return CopyLane(self._cu, slots)


class CopyLane:
    """Host-to-device copies of one lane on its own stream; each slot's copies end
    with an event, so that the slot is refilled only after they completed."""

    def __init__(self, cu, slots):
        self._cu = cu
        self._stream = _vp()
        self._events = []
        self._recorded = [False] * slots
        cu("cuStreamCreate", ctypes.byref(self._stream), _STREAM_NON_BLOCKING)
        try:
            for _ in range(slots):
                event = _vp()
                cu("cuEventCreate", ctypes.byref(event), _EVENT_DISABLE_TIMING)
                self._events.append(event)
        except BaseException:
            self.close()
            raise

    def c_ops(self):
        """The arguments of the engine's CopyOps: libcuda's own functions, the stream
        and the slots' events, and how a failed call raises."""
        lib = self._cu.lib
        fns = [ctypes.cast(getattr(lib, name), _vp).value
               for name in ("cuEventSynchronize", "cuMemcpyHtoDAsync_v2", "cuEventRecord")]
        return (*fns, self._stream.value or 0, [event.value for event in self._events],
                self._failed, None)

    def _failed(self, code, call):
        raise CudaError(call, code, self._cu.error_name(code))

    def copy(self, destination, source, nbytes):
        self._cu("cuMemcpyHtoDAsync_v2", destination, source, nbytes, self._stream)

    def record(self, slot):
        self._cu("cuEventRecord", self._events[slot], self._stream)
        self._recorded[slot] = True

    def wait(self, slot):
        if self._recorded[slot]:
            self._cu("cuEventSynchronize", self._events[slot])
            self._recorded[slot] = False

    def finish(self):
        """Wait for every copy of this lane."""
        self._cu("cuStreamSynchronize", self._stream)
        self._recorded = [False] * len(self._recorded)

    def close(self):
        """Synchronize, then free the events and the stream. If the synchronize fails
        (or is interrupted) they are left as they are: destroying a stream does not
        wait for its copies, and the caller must see them completed first."""
        if self._stream:
            self.finish()
        for event in self._events:
            self._cu.lib.cuEventDestroy_v2(event)
        self._events = []
        if self._stream:
            self._cu.lib.cuStreamDestroy_v2(self._stream)
            self._stream = _vp()
