"""``python -m remote_kernel.kernel -f CONNECTION_FILE --RemoteKernel.target=TARGET``"""

from ipykernel.kernelapp import IPKernelApp

from remote_kernel.kernel.kernel import RemoteKernel

IPKernelApp.launch_instance(kernel_class=RemoteKernel)
