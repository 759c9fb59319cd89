"""An IPython kernel whose shell is a subclass of ipykernel's ``ZMQInteractiveShell`` named
``Shell``, as Colab's ``google.colab._shell.Shell`` is (Kaggle's shell subclasses it too).

The browser test runs the chapters in this kernel, so that frontend detection which tests the
shell's class name instead of ``isinstance`` shows no widget there, as it did on Colab."""
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from ipykernel.zmqshell import ZMQInteractiveShell
from traitlets import Type


class Shell(ZMQInteractiveShell):
    """Colab's shell: a ZMQInteractiveShell under another name."""


class ColabLikeKernel(IPythonKernel):
    shell_class = Type(Shell)


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=ColabLikeKernel)
