"""Tutorial 7: serve mrbridge's Recon as a Gadgetron external Python gadget, and talk to it as Gadgetron does.

The gadget runs where the scanner's reconstruction runs: Gadgetron streams the ISMRMRD header and the
acquisitions, the gadget reconstructs them with the same Recon as ``mrbridge recon`` (a run bundle's, or the
default) and streams ISMRMRD images back. Here a few lines of Python play Gadgetron's part over a local socket.

    .venv/bin/python docs/tutorials/07_gadgetron.py [--matrix 32] [--out out/tutorial7]
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
from pathlib import Path

import ismrmrd
import numpy as np
import torch
from ismrmrd.serialization import ConfigText, ProtocolSerializer

import mrbridge as mb
from mrbridge.gadget import GadgetServer

REPO = Path(__file__).resolve().parents[2]
CLOSE, ERROR, IMAGE = 4, 8, 1022  # Gadgetron message ids


# --8<-- [start:client]
def gadgetron_client(address: tuple[str, int], path: Path) -> list[ismrmrd.Image]:
    """Send an ISMRMRD file as Gadgetron does (config, header, acquisitions, close); return the images."""
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
    acquisitions = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    ds.close()
    with socket.create_connection(address, timeout=60) as sock:
        out = sock.makefile("wb")
        serializer = ProtocolSerializer(out)
        serializer.serialize(ConfigText("<configuration/>"))
        serializer.serialize(header)
        for acquisition in acquisitions:
            serializer.serialize(acquisition)
        serializer.close()
        out.flush()
        stream, images = sock.makefile("rb"), []
        while (head := stream.read(2)) and (mid := struct.unpack("<H", head)[0]) != CLOSE:
            if mid == ERROR:
                (length,) = struct.unpack("<Q", stream.read(8))
                raise RuntimeError(stream.read(length).decode())
            assert mid == IMAGE, f"unexpected message {mid}"
            images.append(ismrmrd.Image.deserialize_from(stream.read))
    return images
# --8<-- [end:client]


def main(matrix: int = 32, out: Path = Path("out/tutorial7")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    seq = mb.Sequence.from_protocol(REPO / "protocols" / "gre.yaml", matrix=matrix)
    mb.write_mrd(mb.simulate(seq, mb.Twin.builtin("brain", matrix=matrix, coils=4), noise=0.01), out / "raw.h5")

    # --8<-- [start:serve]
    mb.Recon(mb.ReconConfig(method="cg", coil_combine="sensitivity")).save(out / "bundle")  # or a trained bundle
    server = GadgetServer(port=0, bundle=out / "bundle")  # port 0: any free port; binds to 127.0.0.1 only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"gadget listening on {server.address[0]}:{server.address[1]}")
    # --8<-- [end:serve]

    # --8<-- [start:exchange]
    images = gadgetron_client(server.address, out / "raw.h5")
    server.shutdown()
    with torch.no_grad():
        local = mb.Recon.load(out / "bundle")(mb.RawData.from_file(out / "raw.h5"))  # what `mrbridge recon` gives
    gadget = np.stack([img.data[0] for img in images])  # (images, z, y, x)
    expected = local.data.numpy().reshape(gadget.shape)
    difference = float(np.abs(gadget - expected).max() / np.abs(expected).max())
    print(f"{len(images)} image(s) {images[0].data.shape[1:]}, FOV {tuple(images[0].field_of_view)} mm, "
          f"method {images[0].meta['mrbridge.method']}; max difference to the local recon {difference:.2e}")
    # --8<-- [end:exchange]
    return {"images": float(len(images)), "difference": difference}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial7"))
    args = parser.parse_args()
    main(args.matrix, args.out)
