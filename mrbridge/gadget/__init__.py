"""Gadgetron external Python gadget: mrbridge's Recon where the scanner's recon runs.

Two launch modes, one conversation (the ``gadgetron`` package's external-module protocol):

* Gadgetron launches it itself: ``python -m gadgetron PORT mrbridge.gadget handle`` connects to Gadgetron on
  localhost:PORT and calls :func:`handle` with the connection (config and ISMRMRD header already read). The
  bundles come from the environment Gadgetron starts it with: ``MRBRIDGE_GADGET_BUNDLES`` (the bundle folder,
  see below) and ``MRBRIDGE_GADGET_BUNDLE`` (the default bundle); ``MRBRIDGE_GADGET_IDLE_TIMEOUT`` (s).
* It listens and Gadgetron connects (``<connect port="9002"/>``): :class:`GadgetServer` (``mrbridge gadget
  --port 9002``) binds to 127.0.0.1 unless told otherwise and serves each connection in its own thread, at most
  ``max_connections`` at a time; one over the cap gets an ERROR "server busy" and CLOSE at once.

Per connection: the config XML, the ISMRMRD header and the acquisitions up to CLOSE are read, converted to
RawData through the one ISMRMRD reader (:func:`mrbridge.raw.mrd.read_mrd`), reconstructed, and returned as
ISMRMRD images (one per repetition and contrast, (z, y, x) each) with the geometry of their acquisitions and the
recon's metadata. Images and waveforms that arrive are passed back unchanged.

Which Recon: the config may name a bundle (``<property name="bundle" value="NAME"/>``). A name is one folder
name inside the bundle folder fixed when the server starts (``--bundles DIR``), never a path: names with ``/``,
``..``, a leading dot, or that resolve (through symlinks) outside that folder are refused, and a server started
without ``--bundles`` refuses every named bundle. Without a name: the bundle fixed at start (``--with``), else
``Recon()``. Errors sent to the client name the bundle as the client named it, never a server path.

The peer is not trusted. Every message is read under :class:`Limits`: at most ``idle_timeout`` s waiting for a
message to start and ``message_timeout`` s for the rest of it; text messages (config, header, image attributes)
at most ``max_text_bytes``; the size of an acquisition is computed from its header (samples × channels × 8
bytes + samples × trajectory dimensions × 4), checked against the ISMRMRD header (receiver channels, encodings)
and the acquisitions before it (one sample and channel count), and against ``max_bytes`` for the whole
connection — all before its payload is allocated. Every failure (bad or truncated data, an unknown message, a
timeout, a recon error) is sent to the client as a Gadgetron ERROR message (id 8, uint64 length, UTF-8 text,
never empty) before CLOSE while the socket still takes data — Gadgetron raises it as a RemoteError — and ends
only its own connection: the server keeps serving. (gadgetron-python 1.4.1 itself reports nothing to its peer
and spins forever on a closed socket; its reader is used only for what Gadgetron's launcher reads first.)
"""

from mrbridge.gadget.bundles import Bundles
from mrbridge.gadget.conversation import acquisitions_to_rawdata, handle, serve_connection, to_ismrmrd_images
from mrbridge.gadget.messages import Limits, ProtocolError, config_parameters, parse_config, parse_header, send_error
from mrbridge.gadget.server import GadgetServer, serve

__all__ = [
    "Bundles", "GadgetServer", "Limits", "ProtocolError", "acquisitions_to_rawdata", "config_parameters", "handle",
    "parse_config", "parse_header", "send_error", "serve", "serve_connection", "to_ismrmrd_images",
]
