"""One adapter per speech vendor behind the interfaces of `workers.vendors.base`."""
