"""Lets openstack.cloud 2.5.0 (the collection ansible 12.3 ships) run on openstacksdk 4.22.

The collection reads ``openstack.version.__version__`` after ``import openstack``, and
openstacksdk no longer imports that (deprecated) submodule itself since 4.15; the
collection's 2.6.0 reads the version another way but is not in any ansible release for
Python 3.11. The playbook test puts this directory on the modules' PYTHONPATH.
"""

import contextlib
import warnings

# without the SDK the modules say so themselves
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import openstack.version  # noqa: F401
