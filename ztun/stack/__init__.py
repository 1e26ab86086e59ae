"""The system stack: TCP terminated by the kernel through a NAT, the user-space UDP NAT, the output queue, and the PacketHandler protocol through which it hands flows to the application."""
