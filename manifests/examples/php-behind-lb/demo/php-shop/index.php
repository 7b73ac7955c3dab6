<?php // demo shop front controller
