# kubelab: `make install`, `make test`, `make bench`. Idempotent, for a fresh Debian/Ubuntu as root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := iproute2 iptables conntrack procps util-linux runc conmon umoci skopeo busybox-static docker-registry bc make python3-venv rsync
# for the tests only (deploy/install.sh gives VMs APT_PACKAGES alone), without Recommends:
# vagrant's (vagrant-libvirt: libvirt, qemu) are 1.2 GB; `vagrant validate` needs none of them
# dnsmasq-base (no daemon is started): the DNS benchmark's peer resolver
APT_TEST_PACKAGES := vagrant shellcheck dnsmasq-base
PROTOS := $(shell find protos -name '*.proto')

.PHONY: install apt venv protos test bench clean lab

install: apt venv protos

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages (no recommends):$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)

venv: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'

protos: venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m bench.run

# the local lab (1 master + 2 worker namespace-bundle VMs) and the seed's walkthrough on it;
# it stays up: `.venv/bin/kubelab lab down` takes it away (docs/lab.md)
lab: install
	$(BIN)/kubelab lab up
	$(BIN)/python -m kubelab.lab.walkthrough

clean:
	find . -name '*_pb2*.py*' -not -path './$(VENV)/*' -delete
	rm -rf $(VENV)
