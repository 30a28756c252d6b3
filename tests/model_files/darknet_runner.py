"""Runs a network in Debian's ``darknet`` (the original darknet of 2018, libdarknet.so) and saves
its output, in a process of its own since darknet exits on errors:
``python darknet_runner.py CFG WEIGHTS INPUT.npy COUNT OUTPUT.npy`` (COUNT floats per sample)."""

import ctypes
import sys

import numpy as np

LIBRARY = "/usr/lib/darknet/libdarknet.so"


def main(cfg: str, weights: str, inputs: str, count: str, output: str) -> None:
    library = ctypes.CDLL(LIBRARY)
    library.load_network.restype = ctypes.c_void_p
    library.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    library.set_batch_network.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.network_predict.restype = ctypes.POINTER(ctypes.c_float)
    library.network_predict.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)]
    network = library.load_network(cfg.encode(), weights.encode(), 0)
    library.set_batch_network(network, 1)
    results = []
    for sample in np.load(inputs).astype(np.float32):
        flat = np.ascontiguousarray(sample.ravel())
        pointer = library.network_predict(network, flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        results.append(np.ctypeslib.as_array(pointer, shape=(int(count),)).copy())
    np.save(output, np.stack(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
